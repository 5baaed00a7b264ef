-- tracksolid.v_mileage_daily_cagg on TimescaleDB: a real-time continuous aggregate
-- of position_history per device and local day of the fleet zone. Its policy
-- re-materialises the last 30 days every 15 minutes, which takes in late and
-- re-uploaded fixes; older back-fills need
-- CALL refresh_continuous_aggregate('tracksolid.v_mileage_daily_cagg', from, to).
--
-- Each local day sums the steps between its own fixes (a bucket of the
-- continuous aggregate sees no fix of the day before), while the stream shares
-- the step that crosses local midnight between the two days; a vehicle driving
-- through midnight therefore has that one step fewer here.
--
-- The zone is fixed when the aggregate is created, so it is rebuilt (and
-- re-materialised by its policy) only when the zone or this definition changes,
-- as recorded in its comment.
DO $$
DECLARE
    zone text := tracksolid.fleet_timezone();
    -- The gap decides which steps the materialised days counted.
    marker text := format(
        'Distance per vehicle and local day, zone %s, fix gap %s s, definition 3.',
        zone, tracksolid.max_fix_gap_seconds());
BEGIN
    IF obj_description(to_regclass('tracksolid.v_mileage_daily_cagg'), 'pg_class')
       = marker THEN
        RETURN;
    END IF;
    DROP MATERIALIZED VIEW IF EXISTS tracksolid.v_mileage_daily_cagg CASCADE;
    EXECUTE format($sql$
        CREATE MATERIALIZED VIEW tracksolid.v_mileage_daily_cagg
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT imei,
               time_bucket(interval '1 day', gps_time, %1$L) AS day_start,
               count(*) AS fixes,
               min(gps_time) AS first_fix,
               max(gps_time) AS last_fix,
               max(speed_kmh) AS max_speed_kmh,
               count(odometer_m) FILTER (WHERE odometer_m > 0) AS odometer_readings,
               max(odometer_m) FILTER (WHERE odometer_m > 0)
                   - min(odometer_m) FILTER (WHERE odometer_m > 0)
                   AS odometer_delta_m,
               tracksolid.path_km(CASE WHEN pos_type = 'GPS' THEN
                   ROW(gps_time, lat, lng, speed_kmh)::tracksolid.path_point END)
                   AS gps_km,
               min(odometer_m) FILTER (WHERE odometer_m > 0) AS odometer_min_m,
               -- The lowest and highest [epoch, metres] pair of the positive
               -- readings are the day's earliest and latest. The seconds are
               -- taken of the interval since 'epoch' (1970-01-01 00:00 UTC), the
               -- same number as extract(epoch FROM gps_time): that form is only
               -- STABLE, and TimescaleDB before 2.20 refuses a continuous
               -- aggregate that calls anything not IMMUTABLE.
               (min(ARRAY[extract(epoch FROM gps_time - timestamptz 'epoch')
                              ::double precision, odometer_m])
                   FILTER (WHERE odometer_m > 0))[2] AS odometer_first_m,
               (max(ARRAY[extract(epoch FROM gps_time - timestamptz 'epoch')
                              ::double precision, odometer_m])
                   FILTER (WHERE odometer_m > 0))[2] AS odometer_last_m,
               (max(ARRAY[extract(epoch FROM gps_time - timestamptz 'epoch')
                              ::double precision, odometer_m])
                   FILTER (WHERE odometer_m > 0))[1]
                   - (min(ARRAY[extract(epoch FROM gps_time - timestamptz 'epoch')
                                    ::double precision, odometer_m])
                      FILTER (WHERE odometer_m > 0))[1]
                   AS odometer_span_s
        FROM tracksolid.position_history
        GROUP BY imei, time_bucket(interval '1 day', gps_time, %1$L)
        WITH NO DATA$sql$, zone);
    -- A continuous aggregate is a view to the catalog.
    EXECUTE format('COMMENT ON VIEW tracksolid.v_mileage_daily_cagg IS %L', marker);
    PERFORM add_continuous_aggregate_policy('tracksolid.v_mileage_daily_cagg',
        start_offset => interval '30 days',
        end_offset => interval '1 hour',
        schedule_interval => interval '15 minutes');
END $$;

-- The continuous aggregate refreshes itself; nothing to do in these two. Kept so
-- that the refresh functions of plain PostgreSQL can be called on either flavour.
CREATE OR REPLACE FUNCTION tracksolid.refresh_mileage_daily(
    from_time timestamptz DEFAULT NULL, to_time timestamptz DEFAULT NULL
) RETURNS bigint
    LANGUAGE sql AS $$ SELECT 0::bigint $$;

CREATE OR REPLACE FUNCTION tracksolid.refresh_mileage_daily_changes(
    lookback interval DEFAULT interval '30 days',
    overlap interval DEFAULT interval '1 hour'
) RETURNS bigint
    LANGUAGE sql AS $$ SELECT 0::bigint $$;
