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
DO $do$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'tokenvault_notify' AND tgrelid = '"{schema}".tokenvault_records'::regclass) THEN
        CREATE TRIGGER tokenvault_notify AFTER INSERT OR UPDATE OR DELETE ON "{schema}".tokenvault_records
        FOR EACH ROW EXECUTE FUNCTION "{schema}".tokenvault_notify();
    END IF;
END $do$;
COMMIT;
