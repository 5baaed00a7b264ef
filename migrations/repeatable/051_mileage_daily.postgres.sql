-- tracksolid.v_mileage_daily_cagg on plain PostgreSQL: a table with the columns of
-- the TimescaleDB continuous aggregate. The API's refresh loop keeps it up to date
-- with tracksolid.refresh_mileage_daily_changes; tracksolid.refresh_mileage_daily
-- recomputes a range of days by hand (a backfill, fixes older than 30 days).
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
    -- The days that earlier runs took in are gone with the old table: the next
    -- run of refresh_mileage_daily_changes must fill the whole window again.
    IF EXISTS (SELECT 1 FROM reporting.refresh_log
               WHERE relation = 'tracksolid.v_mileage_daily_cagg'
                 AND stored_before IS NOT NULL) THEN
        INSERT INTO reporting.refresh_log (relation, started_at, finished_at,
                                           row_count, stored_before)
        VALUES ('tracksolid.v_mileage_daily_cagg', now(), now(), 0, '-infinity');
    END IF;
END $$;

-- Recompute the device-days of [lo, hi), local midnights, of every device or of
-- those in imeis. Returns the number of device-days written.
CREATE OR REPLACE FUNCTION tracksolid.recompute_mileage_daily(
    lo timestamptz, hi timestamptz, imeis text[] DEFAULT NULL
) RETURNS bigint
    LANGUAGE plpgsql
    -- Two days of a large fleet are sorted in memory rather than on disk.
    SET work_mem = '128MB'
    -- Planned for each call's own days and devices: a plan cached for every
    -- device would read a whole day to recompute one device of it.
    SET plan_cache_mode = force_custom_plan
    AS $$
DECLARE
    zone text := tracksolid.fleet_timezone();
    gap double precision := tracksolid.max_fix_gap_seconds();
    written bigint;
BEGIN
    DELETE FROM tracksolid.v_mileage_daily_cagg
    WHERE day_start >= lo AND day_start < hi
      AND (imeis IS NULL OR imei = ANY (imeis));
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
                  AND (imeis IS NULL OR imei = ANY (imeis))
            ) fixes
            WINDOW w AS (PARTITION BY imei, day_start, is_gps ORDER BY gps_time)
        ) pairs
        -- OFFSET 0 keeps this level apart: merged into the aggregate, the inlined
        -- distance expression would be evaluated once per use of step_m.
        OFFSET 0
    ) steps
    GROUP BY imei, day_start;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END $$;

-- Recompute the local days that touch [from_time, to_time); NULL bounds reach the
-- first and last fix. Returns the number of device-days written.
CREATE OR REPLACE FUNCTION tracksolid.refresh_mileage_daily(
    from_time timestamptz DEFAULT NULL, to_time timestamptz DEFAULT NULL
) RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    zone text := tracksolid.fleet_timezone();
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
    written := tracksolid.recompute_mileage_daily(lo, hi);
    INSERT INTO reporting.refresh_log (relation, started_at, finished_at, row_count)
    VALUES ('tracksolid.v_mileage_daily_cagg', started, clock_timestamp(), written);
    RETURN written;
END $$;

-- Take in the fixes stored since the last run, as the continuous aggregate
-- does on TimescaleDB: recompute each device-day within the last `lookback`
-- that got a fix, today's of every reporting device as much as a late fix's
-- (a device buffering out of coverage, a replayed topic, a pipeline that was
-- down). A day that got nothing new is left as it is, so a run costs the days
-- the fleet is driving, not yesterday again. Returns the number of device-days
-- written.
--
-- New fixes are found by position_history.stored_at, the start of the
-- transaction that stored them, so a fix counts however long after it was
-- received it was committed. A run records a mark, and the next one takes in
-- what was stored from that mark less `overlap`. The mark is the run's start,
-- or the start of the oldest transaction then open in this database if that is
-- earlier: such a transaction commits rows stamped before the run, after the
-- run has read the table. A session idle in a transaction for hours therefore
-- holds the mark back, and each run reads and recomputes all that was stored
-- since it began, until it ends.
--
-- `overlap` covers what the mark cannot see: pg_stat_activity shows another
-- role's transactions without their start, unless the caller is a member of
-- pg_read_all_stats, and the server clock may step back. Ten minutes covers a
-- position sink's transaction from its start to its commit: six statements
-- (lock, column check, two COPYs, an INSERT, COMMIT), each cancelled after the
-- sink's 60 s command timeout, and the sink's own work between them. A fix
-- dated before `lookback` is not taken in: refresh_mileage_daily(from, to) is.
CREATE OR REPLACE FUNCTION tracksolid.refresh_mileage_daily_changes(
    lookback interval DEFAULT interval '30 days',
    overlap interval DEFAULT interval '10 minutes'
) RETURNS bigint
    LANGUAGE plpgsql
    SET work_mem = '128MB'
    -- The search for changed days is planned for its own bounds, so that the
    -- index on stored_at is weighed against the rows it would really skip.
    SET plan_cache_mode = force_custom_plan
    AS $$
DECLARE
    zone text := tracksolid.fleet_timezone();
    started timestamptz := clock_timestamp();
    window_lo timestamptz := date_trunc('day', (now() - lookback) AT TIME ZONE zone)
                             AT TIME ZONE zone;
    since timestamptz;
    mark timestamptz;
    touched_day timestamptz;
    imeis text[];
    written bigint;
BEGIN
    -- The table must be read after the mark is taken, with a snapshot of its
    -- own; a transaction's snapshot may be older than the mark.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'refresh_mileage_daily_changes cannot run at %',
                        current_setting('transaction_isolation')
            USING HINT = 'call it at READ COMMITTED, the default';
    END IF;
    -- No earlier run, or a rebuilt table: every device-day of the window.
    SELECT coalesce(max(stored_before), '-infinity') - overlap INTO since
    FROM (SELECT stored_before FROM reporting.refresh_log
          WHERE relation = 'tracksolid.v_mileage_daily_cagg'
            AND ok AND stored_before IS NOT NULL
          ORDER BY started_at DESC, id DESC
          LIMIT 1) latest;
    -- pg_stat_activity is read once per transaction unless cleared, and must be
    -- read now. Autovacuum stores no fixes.
    PERFORM pg_stat_clear_snapshot();
    SELECT least(started, min(xact_start)) INTO mark
    FROM pg_stat_activity
    WHERE datname = current_database()
      AND pid <> pg_backend_pid()
      AND backend_type <> 'autovacuum worker';
    written := 0;
    FOR touched_day, imeis IN
        SELECT day_start, array_agg(imei)
        FROM (
            SELECT DISTINCT imei,
                   date_trunc('day', gps_time AT TIME ZONE zone) AT TIME ZONE zone
                       AS day_start
            FROM tracksolid.position_history
            WHERE stored_at >= since
              AND gps_time >= window_lo
        ) touched
        GROUP BY day_start
        ORDER BY day_start
    LOOP
        written := written + tracksolid.recompute_mileage_daily(
            touched_day,
            ((touched_day AT TIME ZONE zone) + interval '1 day') AT TIME ZONE zone,
            imeis);
    END LOOP;
    INSERT INTO reporting.refresh_log (relation, started_at, finished_at, row_count,
                                       stored_before)
    VALUES ('tracksolid.v_mileage_daily_cagg', started, clock_timestamp(), written,
            mark);
    RETURN written;
END $$;
