-- tracksolid.v_mileage_daily_cagg on plain PostgreSQL: a table with the columns of
-- the TimescaleDB continuous aggregate, filled by tracksolid.refresh_mileage_daily,
-- which the API's refresh loop calls for the recent days.
--
-- Each local day sums the steps between its own fixes (a bucket of the
-- continuous aggregate sees no fix of the day before), while the stream shares
-- the step that crosses local midnight between the two days; a vehicle driving
-- through midnight therefore has that one step fewer here.
--
-- Rebuilt only when the fleet zone or this definition changes, as recorded in its
-- comment.
DO $$
DECLARE
    marker text := format(
        'Distance per vehicle and local day, zone %s, fix gap %s s, definition 3.',
        tracksolid.fleet_timezone(), tracksolid.max_fix_gap_seconds());
BEGIN
    IF obj_description(to_regclass('tracksolid.v_mileage_daily_cagg'), 'pg_class')
       = marker THEN
        RETURN;
    END IF;
    DROP TABLE IF EXISTS tracksolid.v_mileage_daily_cagg CASCADE;
    CREATE TABLE tracksolid.v_mileage_daily_cagg (
        imei text NOT NULL,
        day_start timestamptz NOT NULL,
        fixes bigint NOT NULL,
        first_fix timestamptz NOT NULL,
        last_fix timestamptz NOT NULL,
        max_speed_kmh double precision,
        odometer_readings bigint NOT NULL,
        odometer_delta_m double precision,
        gps_km double precision,
        odometer_min_m double precision,
        odometer_first_m double precision,
        odometer_last_m double precision,
        odometer_span_s double precision,
        PRIMARY KEY (imei, day_start)
    );
    CREATE INDEX v_mileage_daily_cagg_day_start
        ON tracksolid.v_mileage_daily_cagg (day_start);
    EXECUTE format('COMMENT ON TABLE tracksolid.v_mileage_daily_cagg IS %L', marker);
END $$;

-- Recompute the local days that touch [from_time, to_time); NULL bounds reach the
-- first and last fix. Returns the number of device-days written.
CREATE OR REPLACE FUNCTION tracksolid.refresh_mileage_daily(
    from_time timestamptz DEFAULT NULL, to_time timestamptz DEFAULT NULL
) RETURNS bigint
    LANGUAGE plpgsql
    -- Two days of a large fleet are sorted in memory rather than on disk.
    SET work_mem = '128MB'
    AS $$
DECLARE
    zone text := tracksolid.fleet_timezone();
    gap double precision := tracksolid.max_fix_gap_seconds();
    started timestamptz := clock_timestamp();
    lo timestamptz;
    hi timestamptz;
    written bigint;
BEGIN
    lo := date_trunc('day', coalesce(from_time, '-infinity') AT TIME ZONE zone)
          AT TIME ZONE zone;
    hi := CASE WHEN to_time IS NULL THEN 'infinity'::timestamptz
               ELSE (date_trunc('day', (to_time - interval '1 microsecond')
                                       AT TIME ZONE zone) + interval '1 day')
                    AT TIME ZONE zone END;
    DELETE FROM tracksolid.v_mileage_daily_cagg
    WHERE day_start >= lo AND day_start < hi;
    -- Set-based rather than through tracksolid.path_km: the same steps and rule,
    -- several times faster. Partitioning by pos_type = 'GPS' makes each GPS
    -- fix's previous fix the previous GPS fix of the same day. A positive
    -- odometer reading also travels as [epoch, metres], so that the lowest and
    -- highest of those pairs are the day's earliest and latest readings.
    INSERT INTO tracksolid.v_mileage_daily_cagg (
        imei, day_start, fixes, first_fix, last_fix, max_speed_kmh,
        odometer_readings, odometer_delta_m, gps_km, odometer_min_m,
        odometer_first_m, odometer_last_m, odometer_span_s)
    SELECT imei,
           day_start,
           count(*),
           min(gps_time),
           max(gps_time),
           max(speed_kmh),
           count(odometer),
           max(odometer) - min(odometer),
           coalesce(sum(step_m) FILTER (
               WHERE is_gps AND tracksolid.step_counts(step_m, step_s, speed_kmh,
                                                       prev_speed_kmh, gap)), 0) / 1000,
           min(odometer),
           (min(reading))[2],
           (max(reading))[2],
           (max(reading))[1] - (min(reading))[1]
    FROM (
        SELECT imei, gps_time, speed_kmh, odometer, reading, day_start, is_gps,
               prev_speed_kmh,
               tracksolid.distance_m(prev_lat, prev_lng, lat, lng) AS step_m,
               extract(epoch FROM gps_time - prev_time) AS step_s
        FROM (
            SELECT imei, gps_time, lat, lng, speed_kmh, odometer, reading, day_start,
                   is_gps,
                   lag(gps_time) OVER w AS prev_time,
                   lag(lat) OVER w AS prev_lat,
                   lag(lng) OVER w AS prev_lng,
                   lag(speed_kmh) OVER w AS prev_speed_kmh
            FROM (
                SELECT imei, gps_time, lat, lng, speed_kmh,
                       CASE WHEN odometer_m > 0 THEN odometer_m END AS odometer,
                       CASE WHEN odometer_m > 0 THEN ARRAY[
                           extract(epoch FROM gps_time)::double precision, odometer_m]
                       END AS reading,
                       pos_type = 'GPS' AS is_gps,
                       date_trunc('day', gps_time AT TIME ZONE zone)
                           AT TIME ZONE zone AS day_start
                FROM tracksolid.position_history
                WHERE gps_time >= lo AND gps_time < hi
            ) fixes
            WINDOW w AS (PARTITION BY imei, day_start, is_gps ORDER BY gps_time)
        ) pairs
        -- OFFSET 0 keeps this level apart: merged into the aggregate, the inlined
        -- distance expression would be evaluated once per use of step_m.
        OFFSET 0
    ) steps
    GROUP BY imei, day_start;
    GET DIAGNOSTICS written = ROW_COUNT;
    INSERT INTO reporting.refresh_log (relation, started_at, finished_at, row_count)
    VALUES ('tracksolid.v_mileage_daily_cagg', started, clock_timestamp(), written);
    RETURN written;
END $$;
