-- Schemas of the pipeline and the fleet settings that SQL cannot read from the
-- environment.
CREATE SCHEMA IF NOT EXISTS tracksolid;
CREATE SCHEMA IF NOT EXISTS reporting;

CREATE TABLE tracksolid.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
COMMENT ON TABLE tracksolid.settings IS
    'Fleet-wide settings read by views and functions; the migrate command writes '
    'fleet_timezone from FLEETSTREAM_FLEET_TIMEZONE.';
INSERT INTO tracksolid.settings (key, value)
    VALUES ('fleet_timezone', 'Africa/Nairobi');

-- The zone of the fleet's local day. STABLE, so one query sees one value.
CREATE FUNCTION tracksolid.fleet_timezone() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(
        (SELECT value FROM tracksolid.settings WHERE key = 'fleet_timezone'),
        'Africa/Nairobi') $$;
