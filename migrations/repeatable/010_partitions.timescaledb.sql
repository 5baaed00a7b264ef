-- On TimescaleDB, hypertables create their chunks on insert; nothing to prepare.
-- The function exists on both flavours so that callers need not know which runs.
CREATE OR REPLACE FUNCTION tracksolid.ensure_partitions(
    ahead interval DEFAULT interval '3 months'
) RETURNS integer
    LANGUAGE sql AS $$ SELECT 0 $$;
