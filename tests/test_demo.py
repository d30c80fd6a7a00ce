import psycopg2

from pgcopy import datasets, verify
from pgcopy.cli import main


def test_demo_end_to_end(capsys):
    assert main(["demo", "--scale", "1", "-p", "2"]) == 0
    captured = capsys.readouterr()
    assert "verified: every destination table has the same row count and checksum" in captured.err
    assert "Rows copied:" in captured.out


def test_datasets_are_deterministic_and_verify_detects_differences(src, dst):
    for db in (src, dst):
        conn = psycopg2.connect(db.dsn)
        datasets.SHOP.create(conn)
        datasets.SHOP.seed(conn, 1)
        conn.close()
    a, b = psycopg2.connect(src.dsn), psycopg2.connect(dst.dsn)
    try:
        sums = verify.checksums(a)
        assert sums[("public", "orders")][0] == datasets.sizes("shop", 1)["orders"]
        assert verify.differences(sums, verify.checksums(b)) == []
        b.cursor().execute("UPDATE orders SET total = total + 1 WHERE id = 5")
        b.commit()
        assert verify.differences(sums, verify.checksums(b)) == [
            f"public.orders: source {sums[('public', 'orders')]} vs destination {verify.checksums(b)[('public', 'orders')]}"
        ]
    finally:
        a.close()
        b.close()
