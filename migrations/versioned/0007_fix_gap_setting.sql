-- The longest silence between two fixes that a step of the daily GPS distance may
-- span (tracksolid.max_fix_gap_seconds), stored as the migrate command writes it
-- so that the default already in force is not taken for a change.
INSERT INTO tracksolid.settings (key, value)
    VALUES ('max_fix_gap_seconds', '3600.0')
    ON CONFLICT (key) DO NOTHING;
COMMENT ON TABLE tracksolid.settings IS
    'Fleet-wide settings read by views and functions; the migrate command writes '
    'fleet_timezone from FLEETSTREAM_FLEET_TIMEZONE and max_fix_gap_seconds from '
    'FLEETSTREAM_MAX_FIX_GAP_SECONDS.';
