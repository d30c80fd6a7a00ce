-- The engine's fidelity schema: every shape of table, key and type pgcopy must carry.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE SCHEMA other;

CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, mood mood, moods mood[], p pair, ps pair[],
                        doc jsonb, blob bytea, big text, tags text[], created timestamptz DEFAULT now());
CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                     amount numeric(12,2), total_x2 numeric GENERATED ALWAYS AS (amount * 2) STORED);
CREATE TABLE order_items (order_id int REFERENCES orders(id) ON DELETE CASCADE, line int, qty int,
                          PRIMARY KEY (order_id, line));
-- two-table cycle, one side DEFERRABLE
CREATE TABLE cyc_a (id int PRIMARY KEY, b_id int);
CREATE TABLE cyc_b (id int PRIMARY KEY, a_id int REFERENCES cyc_a(id) DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE cyc_a ADD CONSTRAINT cyc_a_b_fk FOREIGN KEY (b_id) REFERENCES cyc_b(id);
-- self reference pointing forward
CREATE TABLE tree (id int PRIMARY KEY, parent_id int CONSTRAINT same_name REFERENCES tree(id));
-- same-named constraint on another table, across schemas, composite MATCH FULL
CREATE TABLE other."Pairs" (x int, y int, "Select" text, PRIMARY KEY (x, y));
CREATE TABLE other.pair_refs (id int PRIMARY KEY, x int, y int,
    CONSTRAINT same_name FOREIGN KEY (x, y) REFERENCES other."Pairs"(x, y) MATCH FULL);
CREATE TABLE xschema (id int PRIMARY KEY, cust bigint REFERENCES public.customers(id));
-- NOT VALID FK with violating rows
CREATE TABLE loose (id int PRIMARY KEY, cust bigint);
ALTER TABLE loose ADD CONSTRAINT loose_cust_fk FOREIGN KEY (cust) REFERENCES customers(id) NOT VALID;
-- partitioned table with an FK, and an FK to a partitioned table
CREATE TABLE events (id int, at date, customer_id bigint REFERENCES customers(id), PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE event_notes (id int PRIMARY KEY, event_id int, event_at date, FOREIGN KEY (event_id, event_at) REFERENCES events(id, at));
-- inheritance
CREATE TABLE animals (id int, name text);
CREATE TABLE dogs (breed text) INHERITS (animals);
-- standalone sequence
CREATE SEQUENCE standalone_seq;
-- user trigger that would alter rows, and a disabled one
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := upper(NEW.name) || '!'; RETURN NEW; END $$;
CREATE TRIGGER customers_shout BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION shout();
CREATE TRIGGER customers_off BEFORE INSERT ON customers FOR EACH ROW EXECUTE FUNCTION shout();
ALTER TABLE customers DISABLE TRIGGER customers_off;
CREATE TABLE empty_src (id int, note text);
CREATE TABLE "Mixed Case" ("Col" int, "order" text);
CREATE MATERIALIZED VIEW customer_counts AS SELECT count(*) AS n FROM customers;
-- every kind of index, to be rebuilt exactly (with --index-rebuild-threshold 0)
CREATE TABLE bookings (id int PRIMARY KEY, code text NOT NULL, room int, during tsrange,
    CONSTRAINT bookings_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (during WITH &&));
CREATE UNIQUE INDEX bookings_room_uq ON bookings (room, id);
CREATE INDEX bookings_lower_code ON bookings (lower(code)) WHERE room IS NOT NULL;
COMMENT ON INDEX bookings_lower_code IS 'lookup by code';
COMMENT ON CONSTRAINT bookings_code_key ON bookings IS 'codes are unique';
ALTER TABLE bookings CLUSTER ON bookings_pkey;
ALTER TABLE bookings ALTER COLUMN room SET NOT NULL;
ALTER TABLE bookings REPLICA IDENTITY USING INDEX bookings_room_uq;
