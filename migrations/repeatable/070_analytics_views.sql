-- Analytics views over the base tables: what a fleet manager asks of the fleet
-- today, per driver and per day. "Today" and every date are local days of the
-- fleet zone (tracksolid.fleet_timezone()), read through a scalar subquery so
-- that it is evaluated once per query rather than once per row.

-- A trip still open (end_time NULL) ends, in every view here, where it has got
-- to as of the last refresh of reporting.v_trips: its span_end, the same end
-- its duration_s is counted up to.
--
-- Dropped first so that a view may change its columns; CASCADE because the
-- views of later files, which may depend on these, are then rebuilt too.
DROP VIEW IF EXISTS tracksolid.v_driver_clock_attendance CASCADE;
DROP VIEW IF EXISTS tracksolid.v_driver_clock_today CASCADE;
DROP VIEW IF EXISTS tracksolid.v_driver_clock_daily CASCADE;
DROP VIEW IF EXISTS tracksolid.v_driver_aggregates_daily CASCADE;
DROP VIEW IF EXISTS tracksolid.v_fleet_trace CASCADE;
DROP VIEW IF EXISTS tracksolid.v_vehicles_not_moved_today CASCADE;
DROP VIEW IF EXISTS tracksolid.v_ingestion_health CASCADE;
DROP VIEW IF EXISTS tracksolid.v_fleet_km_daily CASCADE;
DROP VIEW IF EXISTS tracksolid.v_alarms_daily CASCADE;
DROP VIEW IF EXISTS tracksolid.v_currently_idle CASCADE;
DROP VIEW IF EXISTS tracksolid.v_active_dispatch_map CASCADE;
DROP VIEW IF EXISTS tracksolid.v_fleet_status CASCADE;
DROP VIEW IF EXISTS tracksolid.v_fleet_today CASCADE;

CREATE VIEW tracksolid.v_fleet_today AS
SELECT d.imei,
       d.vehicle_number,
       d.driver_name,
       d.cost_centre,
       d.city,
       count(t.trip_id) AS trips,
       round(coalesce(sum(t.distance_km), 0)::numeric, 2) AS trip_km,
       round((coalesce(sum(t.duration_s), 0) / 3600.0)::numeric, 2) AS driving_hours,
       min(t.start_time) AS first_trip_start,
       max(coalesce(t.end_time, t.span_end)) AS last_trip_end,
       max(t.max_speed_kmh) AS max_speed_kmh,
       -- Today runs from one local midnight of the fleet zone to the next. The
       -- date becomes a wall-clock timestamp before AT TIME ZONE places it in
       -- the zone: given the date itself, PostgreSQL would take midnight of the
       -- session's zone instead, and the day would move with each client.
       (SELECT count(*) FROM tracksolid.alarms a
        WHERE a.imei = d.imei
          AND a.alarm_time >= (SELECT tracksolid.local_today()::timestamp
                                      AT TIME ZONE tracksolid.fleet_timezone())
          AND a.alarm_time < (SELECT (tracksolid.local_today() + 1)::timestamp
                                     AT TIME ZONE tracksolid.fleet_timezone()))
           AS alarms
FROM tracksolid.devices d
LEFT JOIN reporting.v_trips t
       ON t.imei = d.imei AND t.trip_date = (SELECT tracksolid.local_today())
WHERE coalesce(d.enabled, true)
GROUP BY d.imei;
COMMENT ON VIEW tracksolid.v_fleet_today IS
    'Every enabled vehicle''s day so far: trips, kilometres and hours driven, first '
    'start, last stop (of a trip still open: where it has got to), top speed and '
    'alarms raised today.';

-- Read from the registry as well as the latest fixes: a registered vehicle that
-- has never sent a fix has no row in live_positions, and a tracker that reports
-- before it is registered has no row in devices; both are counted.
CREATE VIEW tracksolid.v_fleet_status AS
SELECT s.status,
       count(v.imei) AS vehicles
FROM (VALUES ('moving'), ('idle'), ('parked'), ('offline'), ('never_reported'))
     AS s (status)
LEFT JOIN (
    SELECT coalesce(d.imei, lp.imei) AS imei,
           CASE WHEN lp.imei IS NULL THEN 'never_reported'
                ELSE tracksolid.motion_status(lp.gps_time, lp.speed_kmh, lp.acc_on)
           END AS status
    FROM tracksolid.devices d
    FULL JOIN tracksolid.live_positions lp ON lp.imei = d.imei
    WHERE coalesce(d.enabled, true)
) v ON v.status = s.status
GROUP BY s.status;
COMMENT ON VIEW tracksolid.v_fleet_status IS
    'How many vehicles are moving, idling, parked, offline (no fix for 60 '
    'minutes) or never_reported (registered but no fix ever received: no signal) '
    'right now. Every enabled vehicle counts once, and so does a tracker that '
    'reports without being registered.';

CREATE VIEW tracksolid.v_active_dispatch_map AS
SELECT *
FROM reporting.fn_live_positions(NULL, NULL)
WHERE status IN ('moving', 'idle');
COMMENT ON VIEW tracksolid.v_active_dispatch_map IS
    'Vehicles on duty now (moving, or idling with the ignition on) with their '
    'position and driver: the dispatcher''s map.';

CREATE VIEW tracksolid.v_currently_idle AS
SELECT lp.imei,
       d.vehicle_number,
       d.driver_name,
       d.cost_centre,
       lp.lat,
       lp.lng,
       lp.gps_time,
       moved.last_moving_at AS idle_since,
       round((extract(epoch FROM lp.gps_time - moved.last_moving_at) / 60)::numeric,
             1) AS idle_minutes
FROM tracksolid.live_positions lp
LEFT JOIN tracksolid.devices d ON d.imei = lp.imei
LEFT JOIN LATERAL (
    SELECT max(ph.gps_time) AS last_moving_at
    FROM tracksolid.position_history ph
    WHERE ph.imei = lp.imei
      AND ph.gps_time >= lp.gps_time - interval '24 hours'
      AND ph.speed_kmh >= tracksolid.moving_speed_kmh()
) moved ON true
WHERE coalesce(d.enabled, true)
  AND tracksolid.motion_status(lp.gps_time, lp.speed_kmh, lp.acc_on) = 'idle';
COMMENT ON VIEW tracksolid.v_currently_idle IS
    'Vehicles standing with the engine running now, and since when they last '
    'moved (NULL: not in the last 24 hours); idling burns fuel.';

CREATE VIEW tracksolid.v_alarms_daily AS
SELECT (a.alarm_time AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::date
           AS day,
       a.alarm_type,
       max(a.alarm_name) AS alarm_name,
       count(*) AS alarms,
       count(DISTINCT a.imei) AS vehicles
FROM tracksolid.alarms a
GROUP BY 1, 2;
COMMENT ON VIEW tracksolid.v_alarms_daily IS
    'Alarms raised per local day and alarm type, and how many vehicles raised them.';

CREATE VIEW tracksolid.v_fleet_km_daily AS
SELECT m.local_date AS day,
       count(*) FILTER (WHERE m.distance_km > 0) AS vehicles_moved,
       round(sum(m.distance_km)::numeric, 2) AS distance_km,
       round(sum(m.distance_km) FILTER (WHERE m.distance_source = 'odometer')::numeric,
             2) AS odometer_km,
       round(sum(m.distance_km) FILTER (WHERE m.distance_source = 'gps')::numeric, 2)
           AS gps_km
FROM tracksolid.v_mileage_daily m
GROUP BY m.local_date;
COMMENT ON VIEW tracksolid.v_fleet_km_daily IS
    'Kilometres the whole fleet covered per local day (daily mileage, odometer '
    'where reported, else GPS path) and how many vehicles moved.';

-- Every method called in the last 7 days is listed, so one that has stopped
-- stays in view instead of dropping out. Methods run at their own pace (device
-- positions every minute, histories per device every half hour, the device list
-- hourly), each cycle a burst of calls, so a method's usual interval is the
-- median gap between its cycles: gaps under 30 seconds are calls of one burst.
-- A method is stale after three usual intervals without a call, never sooner
-- than 15 minutes (a timed-out call and its back-off fit in that), and failing
-- when it is called but has not succeeded for as long.
CREATE VIEW tracksolid.v_ingestion_health AS
WITH calls AS (
    SELECT l.method,
           l.called_at,
           l.record_count,
           l.duration_ms,
           l.error IS NULL AND coalesce(l.result_code, 0) = 0 AS succeeded,
           l.called_at >= now() - interval '1 hour' AS last_hour,
           l.called_at - lag(l.called_at) OVER (PARTITION BY l.method
                                                ORDER BY l.called_at) AS gap
    FROM tracksolid.ingestion_log l
    WHERE l.called_at >= now() - interval '7 days'
), methods AS (
    SELECT c.method,
           count(*) FILTER (WHERE c.last_hour) AS calls_last_hour,
           count(*) FILTER (WHERE c.last_hour AND NOT c.succeeded) AS failed_last_hour,
           coalesce(sum(c.record_count) FILTER (WHERE c.last_hour), 0)
               AS records_last_hour,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY c.duration_ms)
               FILTER (WHERE c.last_hour) AS p95_ms,
           max(c.called_at) AS last_call_at,
           max(c.called_at) FILTER (WHERE c.succeeded) AS last_success_at,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY c.gap)
               FILTER (WHERE c.gap >= interval '30 seconds') AS usual_interval
    FROM calls c
    GROUP BY c.method
), judged AS (
    SELECT m.*,
           greatest(interval '15 minutes', 3 * m.usual_interval) AS stale_after
    FROM methods m
)
SELECT j.method,
       j.calls_last_hour,
       j.failed_last_hour,
       j.records_last_hour,
       j.p95_ms,
       j.last_call_at,
       j.last_success_at,
       (SELECT max(received_at) FROM tracksolid.live_positions) AS last_fix_received_at,
       floor(extract(epoch FROM now() - j.last_call_at))::integer
           AS seconds_since_last_call,
       extract(epoch FROM j.stale_after)::integer AS stale_after_seconds,
       CASE WHEN now() - j.last_call_at > j.stale_after THEN 'stale'
            WHEN j.last_success_at IS NULL
                 OR now() - j.last_success_at > j.stale_after THEN 'failing'
            ELSE 'ok'
       END AS status
FROM judged j;
COMMENT ON VIEW tracksolid.v_ingestion_health IS
    'Is data flowing: every Open API method called in the last 7 days with its '
    'calls, failures, records and 95th percentile latency in the last hour, its '
    'last call and last success (NULL: none in 7 days), seconds since the last '
    'call, and status: stale (no call for three of its usual intervals, at least '
    '15 minutes), failing (called, but no success for as long) or ok; and the '
    'newest fix received. A method silent for over 7 days is no longer listed.';

CREATE VIEW tracksolid.v_vehicles_not_moved_today AS
SELECT d.imei,
       d.vehicle_number,
       d.driver_name,
       d.cost_centre,
       d.city,
       lp.gps_time AS last_fix_at,
       lp.lat,
       lp.lng
FROM tracksolid.devices d
LEFT JOIN tracksolid.live_positions lp ON lp.imei = d.imei
WHERE coalesce(d.enabled, true)
  AND NOT EXISTS (
      SELECT 1 FROM reporting.v_trips t
      WHERE t.imei = d.imei AND t.trip_date = (SELECT tracksolid.local_today()))
  AND NOT EXISTS (
      SELECT 1 FROM tracksolid.v_mileage_daily m
      WHERE m.imei = d.imei AND m.local_date = (SELECT tracksolid.local_today())
        AND m.distance_km >= 0.5);
COMMENT ON VIEW tracksolid.v_vehicles_not_moved_today IS
    'Enabled vehicles with no trip today and under 0.5 km of daily mileage: '
    'parked all day, or not reporting.';

CREATE VIEW tracksolid.v_fleet_trace AS
SELECT ph.imei,
       d.vehicle_number,
       d.driver_name,
       ph.gps_time,
       ph.lat,
       ph.lng,
       ph.speed_kmh,
       ph.direction_deg,
       ph.acc_on
FROM tracksolid.position_history ph
LEFT JOIN tracksolid.devices d ON d.imei = ph.imei
WHERE ph.gps_time >= now() - interval '2 hours'
  AND ph.pos_type NOT IN ('LBS', 'WIFI');
COMMENT ON VIEW tracksolid.v_fleet_trace IS
    'The last two hours of satellite fixes of every vehicle: the trails on the '
    'fleet map.';

CREATE VIEW tracksolid.v_driver_aggregates_daily AS
SELECT t.trip_date AS day,
       t.driver_name,
       count(*) AS trips,
       count(DISTINCT t.imei) AS vehicles,
       round(sum(t.distance_km)::numeric, 2) AS distance_km,
       round((sum(t.duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(t.max_speed_kmh) AS max_speed_kmh,
       round((sum(t.distance_km) / nullif(sum(t.duration_s) / 3600.0, 0))::numeric,
             1) AS avg_speed_kmh
FROM reporting.v_trips t
WHERE nullif(trim(t.driver_name), '') IS NOT NULL
GROUP BY 1, 2;
COMMENT ON VIEW tracksolid.v_driver_aggregates_daily IS
    'Per driver and local day: trips, vehicles driven, kilometres, hours at the '
    'wheel, top speed and average moving speed.';

CREATE VIEW tracksolid.v_driver_clock_daily AS
SELECT t.trip_date AS day,
       t.driver_name,
       min(t.start_time) AS clock_in,
       max(coalesce(t.end_time, t.span_end)) AS clock_out,
       round((extract(epoch FROM max(coalesce(t.end_time, t.span_end))
                                 - min(t.start_time)) / 3600.0)::numeric, 2)
           AS on_duty_hours,
       round((sum(t.duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       count(*) AS trips
FROM reporting.v_trips t
WHERE nullif(trim(t.driver_name), '') IS NOT NULL
GROUP BY 1, 2;
COMMENT ON VIEW tracksolid.v_driver_clock_daily IS
    'A driver''s working day read from trips: first start (clock in), last stop '
    '(clock out; of a trip still open, where it has got to), hours on duty between '
    'them and hours actually driving.';

CREATE VIEW tracksolid.v_driver_clock_today AS
SELECT *
FROM tracksolid.v_driver_clock_daily
WHERE day = (SELECT tracksolid.local_today());
COMMENT ON VIEW tracksolid.v_driver_clock_today IS
    'v_driver_clock_daily for today: who is working and since when.';

-- The shift start used for punctuality; operators may set it in
-- tracksolid.settings (key shift_start_local, e.g. 07:30).
CREATE OR REPLACE FUNCTION tracksolid.shift_start_local() RETURNS time
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT coalesce((SELECT value FROM tracksolid.settings
                 WHERE key = 'shift_start_local'), '08:00')::time
$$;

CREATE VIEW tracksolid.v_driver_clock_attendance AS
SELECT c.day,
       c.driver_name,
       c.clock_in,
       c.clock_out,
       (c.clock_in AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::time
           AS clock_in_local,
       (c.clock_in AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::time
           <= tracksolid.shift_start_local() AS on_time,
       greatest(0, round((extract(epoch FROM
           (c.clock_in AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::time
           - tracksolid.shift_start_local()) / 60)::numeric)) AS minutes_late,
       c.on_duty_hours,
       c.driving_hours
FROM tracksolid.v_driver_clock_daily c
WHERE c.day >= (SELECT tracksolid.local_today()) - 30;
COMMENT ON VIEW tracksolid.v_driver_clock_attendance IS
    'Attendance over the last 30 local days: per driver and day, the clock-in '
    'local time, whether it was on time against the shift start (setting '
    'shift_start_local, default 08:00) and minutes late.';
