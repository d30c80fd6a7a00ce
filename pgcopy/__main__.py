"""``python -m pgcopy`` and the ``pgcopy`` command.

Workers are started with *spawn*, which imports the parent's main script in every worker
(as ``__mp_main__``): so the script imports nothing itself, and the CLI is imported only
when the script runs as the program.
"""


def main() -> int:
    # as in the workers: inspect (and ast, dis, tokenize) only once something uses it
    # (1.5 MB of RSS; every dataclass of ours has a docstring, tests/test_cli.py)
    from pgcopy.lean import defer_inspect

    defer_inspect()
    from pgcopy.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
