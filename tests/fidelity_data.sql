ALTER TABLE customers DISABLE TRIGGER customers_shout;
INSERT INTO customers (name, mood, moods, p, ps, doc, blob, big, tags)
SELECT 'c' || g, (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood, ARRAY['ok','happy']::mood[], ROW(g, 'x' || g)::pair,
       ARRAY[ROW(g, 'y')::pair], jsonb_build_object('g', g, 'n', ARRAY[g, g + 1]), decode(md5(g::text), 'hex'),
       CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 400) END, ARRAY['a', NULL, 'c']
  FROM generate_series(1, 500) g;
ALTER TABLE customers ENABLE TRIGGER customers_shout;
INSERT INTO orders (customer_id, amount) SELECT (g % 500) + 1, g * 1.5 FROM generate_series(1, 1200) g;
INSERT INTO order_items SELECT (g % 1200) + 1, g, g % 7 FROM generate_series(1, 3000) g;
INSERT INTO cyc_a VALUES (1, NULL), (2, NULL);
INSERT INTO cyc_b VALUES (1, 1), (2, 2);
UPDATE cyc_a SET b_id = id;
INSERT INTO tree VALUES (1, NULL);
INSERT INTO tree SELECT g, g - 1 FROM generate_series(2, 50) g;
INSERT INTO other."Pairs" VALUES (1, 1, 'a'), (2, 2, 'b');
INSERT INTO other.pair_refs VALUES (1, 1, 1), (2, NULL, NULL);
INSERT INTO xschema VALUES (1, 1), (2, 2);
ALTER TABLE loose DROP CONSTRAINT loose_cust_fk;
INSERT INTO loose VALUES (1, 1), (2, 999999);
ALTER TABLE loose ADD CONSTRAINT loose_cust_fk FOREIGN KEY (cust) REFERENCES customers(id) NOT VALID;
INSERT INTO events SELECT g, DATE '2024-06-01' + g, (g % 500) + 1 FROM generate_series(1, 400) g;
INSERT INTO event_notes SELECT g, g, DATE '2024-06-01' + g FROM generate_series(1, 100) g;
INSERT INTO animals VALUES (1, 'generic');
INSERT INTO dogs VALUES (2, 'rex', 'lab');
SELECT setval('standalone_seq', 42);
INSERT INTO "Mixed Case" VALUES (1, 'first'), (2, NULL);
REFRESH MATERIALIZED VIEW customer_counts;
ANALYZE;
INSERT INTO bookings SELECT g, 'B' || g, g % 7, tsrange(timestamp '2025-01-01' + g * interval '1 hour', timestamp '2025-01-01' + g * interval '1 hour' + interval '30 minutes') FROM generate_series(1, 300) g;
ANALYZE bookings;
