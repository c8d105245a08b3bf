-- The PostgreSQL storage format, created on first use by every host (postgres.rs and the
-- Node.js package) with {schema}, {channel} and {uncached} filled in. Idempotent, and
-- under an advisory lock so that hosts starting together do not race.
BEGIN;
SELECT pg_advisory_xact_lock(7140591);
CREATE SCHEMA IF NOT EXISTS "{schema}";
CREATE SEQUENCE IF NOT EXISTS "{schema}".tokenvault_version;
CREATE TABLE IF NOT EXISTS "{schema}".tokenvault_records (
    key TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL,
    version BIGINT NOT NULL
);
-- Every write names its key to the hosts that cache records (a key too long
-- for a notification's payload names nothing: they forget everything), but
-- for the audit trail's, which no host caches.
CREATE OR REPLACE FUNCTION "{schema}".tokenvault_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    changed text := CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END;
BEGIN
    IF starts_with(changed, '{uncached}') THEN RETURN NULL; END IF;
    PERFORM pg_notify('{channel}', CASE WHEN octet_length(changed) < 7900 THEN changed ELSE '' END);
    RETURN NULL;
END $fn$;
-- A commit in one statement (one round trip, atomic without a transaction around it):
-- each write in order, keys[i] with vals[i] and expected[i]. A put (vals[i] not NULL)
-- creates the key only if absent when expected[i] is NULL, else replaces it only at that
-- version; a delete (vals[i] NULL) removes it only at expected[i]. The first write whose
-- condition fails raises TV409, undoing the writes before it. Returns each write's new
-- version (NULL for a delete). Consecutive creations (an audit append's entries) go in
-- one INSERT, which costs the server far less than one statement each.
CREATE OR REPLACE FUNCTION "{schema}".tokenvault_commit(keys text[], vals bytea[], expected bigint[])
RETURNS bigint[] LANGUAGE plpgsql AS $fn$
DECLARE
    n int := coalesce(array_length(keys, 1), 0);
    i int := 1;
    last int;
    versions bigint[] := '{}';
    made bigint[];
    made_count int;
    written bigint;
BEGIN
    WHILE i <= n LOOP
        IF vals[i] IS NOT NULL AND expected[i] IS NULL THEN
            last := i;
            WHILE last < n AND vals[last + 1] IS NOT NULL AND expected[last + 1] IS NULL LOOP
                last := last + 1;
            END LOOP;
            WITH created AS (
                INSERT INTO "{schema}".tokenvault_records (key, value, version)
                SELECT k, v, nextval('"{schema}".tokenvault_version') FROM unnest(keys[i:last], vals[i:last]) AS w(k, v)
                ON CONFLICT (key) DO NOTHING RETURNING key, version)
            SELECT array_agg(created.version ORDER BY w.at), (SELECT count(*) FROM created) INTO made, made_count
            FROM unnest(keys[i:last]) WITH ORDINALITY AS w(k, at) LEFT JOIN created ON created.key = w.k;
            -- Fewer rows made than keys named: one of them existed.
            IF made_count <> last - i + 1 THEN
                RAISE EXCEPTION 'a write conflicted' USING ERRCODE = 'TV409';
            END IF;
            versions := versions || made;
            i := last + 1;
            CONTINUE;
        END IF;
        written := NULL;
        IF vals[i] IS NULL THEN
            DELETE FROM "{schema}".tokenvault_records WHERE key = keys[i] AND version = expected[i];
            IF NOT FOUND THEN
                RAISE EXCEPTION 'a write conflicted' USING ERRCODE = 'TV409';
            END IF;
        ELSE
            UPDATE "{schema}".tokenvault_records
                SET value = vals[i], version = nextval('"{schema}".tokenvault_version')
                WHERE key = keys[i] AND version = expected[i] RETURNING version INTO written;
            IF written IS NULL THEN
                RAISE EXCEPTION 'a write conflicted' USING ERRCODE = 'TV409';
            END IF;
        END IF;
        versions := versions || written;
        i := i + 1;
    END LOOP;
    RETURN versions;
END $fn$;
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'tokenvault_notify' AND tgrelid = '"{schema}".tokenvault_records'::regclass) THEN
        CREATE TRIGGER tokenvault_notify AFTER INSERT OR UPDATE OR DELETE ON "{schema}".tokenvault_records
        FOR EACH ROW EXECUTE FUNCTION "{schema}".tokenvault_notify();
    END IF;
END $do$;
COMMIT;
