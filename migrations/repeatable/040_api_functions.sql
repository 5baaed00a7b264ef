-- The functions the API calls. Every timestamp they return is timestamptz; the
-- API session works in UTC.

-- A device is offline when its latest fix is older than this; a fleet manager's
-- "not reporting" threshold, long enough to ride out a poll cycle and a tunnel.
CREATE OR REPLACE FUNCTION tracksolid.offline_after() RETURNS interval
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT interval '60 minutes' $$;

-- Below this speed a vehicle counts as standing still (GPS noise while parked
-- reports a few km/h).
CREATE OR REPLACE FUNCTION tracksolid.moving_speed_kmh() RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 3.0::double precision $$;

-- What a fleet manager calls the state of a vehicle from its latest fix.
CREATE OR REPLACE FUNCTION tracksolid.motion_status(
    gps_time timestamptz, speed_kmh double precision, acc_on boolean
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN gps_time < now() - tracksolid.offline_after() THEN 'offline'
    WHEN coalesce(speed_kmh, 0) >= tracksolid.moving_speed_kmh() THEN 'moving'
    WHEN acc_on THEN 'idle'
    ELSE 'parked'
END
$$;
COMMENT ON FUNCTION tracksolid.motion_status(timestamptz, double precision, boolean)
    IS 'offline (no fix for 60 min), moving (>= 3 km/h), idle (ignition on, '
       'standing) or parked (ignition off or unknown, standing).';

DROP FUNCTION IF EXISTS reporting.fn_live_positions(text, text) CASCADE;
CREATE FUNCTION reporting.fn_live_positions(
    cost_centre text DEFAULT NULL, acc_status text DEFAULT NULL
) RETURNS TABLE (
    imei text,
    vehicle_number text,
    vehicle_name text,
    driver_name text,
    driver_phone text,
    cost_centre text,
    city text,
    device_group text,
    device_model text,
    gps_time timestamptz,
    lat double precision,
    lng double precision,
    speed_kmh double precision,
    direction_deg integer,
    acc_on boolean,
    acc_status text,
    pos_type text,
    status text,
    minutes_since_fix integer
)
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT lp.imei,
       d.vehicle_number,
       d.vehicle_name,
       d.driver_name,
       d.driver_phone,
       d.cost_centre,
       d.city,
       d.device_group,
       d.device_model,
       lp.gps_time,
       lp.lat,
       lp.lng,
       lp.speed_kmh,
       lp.direction_deg,
       lp.acc_on,
       CASE lp.acc_on WHEN true THEN 'on' WHEN false THEN 'off' ELSE 'unknown' END,
       lp.pos_type,
       tracksolid.motion_status(lp.gps_time, lp.speed_kmh, lp.acc_on),
       floor(extract(epoch FROM now() - lp.gps_time) / 60)::integer
FROM tracksolid.live_positions lp
LEFT JOIN tracksolid.devices d ON d.imei = lp.imei
WHERE coalesce(d.enabled, true)
  AND (nullif(trim($1), '') IS NULL OR lower(trim($1)) = 'all'
       OR lower(d.cost_centre) = lower(trim($1)))
  AND (nullif(trim($2), '') IS NULL OR lower(trim($2)) = 'all'
       OR lower(trim($2)) = CASE lp.acc_on WHEN true THEN 'on'
                                           WHEN false THEN 'off'
                                           ELSE 'unknown' END)
ORDER BY d.vehicle_number_norm NULLS LAST, lp.imei
$$;
COMMENT ON FUNCTION reporting.fn_live_positions(text, text) IS
    'Latest fix of every enabled device. cost_centre: exact, case-insensitive; '
    'acc_status: on | off | unknown; NULL, empty or ''all'' means no filter. '
    'Columns: imei, vehicle_number, vehicle_name, driver_name, driver_phone, '
    'cost_centre, city, device_group, device_model, gps_time, lat, lng, speed_kmh, '
    'direction_deg, acc_on, acc_status (on/off/unknown), pos_type, status '
    '(moving/idle/parked/offline), minutes_since_fix. Ordered by plate.';

DROP FUNCTION IF EXISTS reporting.fn_vehicle_track(text, integer) CASCADE;
CREATE FUNCTION reporting.fn_vehicle_track(
    vehicle_number text, hours integer DEFAULT 24
) RETURNS TABLE (
    imei text,
    vehicle_number text,
    gps_time timestamptz,
    lat double precision,
    lng double precision,
    speed_kmh double precision,
    direction_deg integer,
    acc_on boolean,
    pos_type text
)
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT ph.imei,
       d.vehicle_number,
       ph.gps_time,
       ph.lat,
       ph.lng,
       ph.speed_kmh,
       ph.direction_deg,
       ph.acc_on,
       ph.pos_type
FROM tracksolid.devices d
JOIN tracksolid.position_history ph ON ph.imei = d.imei
WHERE (d.vehicle_number_norm = reporting.normalize_plate($1) OR d.imei = trim($1))
  AND ph.gps_time >= now() - make_interval(hours => least(greatest($2, 1), 168))
  AND ph.pos_type NOT IN ('LBS', 'WIFI')
ORDER BY ph.imei, ph.gps_time
$$;
COMMENT ON FUNCTION reporting.fn_vehicle_track(text, integer) IS
    'GPS trail of the last `hours` hours (1..168, default 24) of the vehicle whose '
    'plate normalises like vehicle_number (or whose IMEI it is), oldest first; '
    'cell-tower and Wi-Fi fixes are left out because they jump by hundreds of '
    'metres. Columns: imei, vehicle_number, gps_time, lat, lng, speed_kmh, '
    'direction_deg, acc_on, pos_type.';

DROP FUNCTION IF EXISTS reporting.fn_trips_for_map(
    text[], text, text, text, timestamp, timestamp) CASCADE;
CREATE FUNCTION reporting.fn_trips_for_map(
    vehicles text[] DEFAULT NULL,
    driver text DEFAULT NULL,
    cost_centre text DEFAULT NULL,
    city text DEFAULT NULL,
    start timestamp DEFAULT NULL,
    "end" timestamp DEFAULT NULL
) RETURNS TABLE (
    trip_id text,
    imei text,
    vehicle_number text,
    vehicle_name text,
    driver_name text,
    cost_centre text,
    city text,
    trip_date date,
    start_time timestamptz,
    end_time timestamptz,
    start_lat double precision,
    start_lng double precision,
    end_lat double precision,
    end_lng double precision,
    distance_km double precision,
    duration_s integer,
    max_speed_kmh double precision,
    avg_speed_kmh double precision,
    source text
)
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
-- Each bound is an uncorrelated scalar subquery, computed once per call, so that
-- the zone is read once and the indexes on start_time and span_end apply.
SELECT t.trip_id, t.imei, t.vehicle_number, t.vehicle_name, t.driver_name,
       t.cost_centre, t.city, t.trip_date, t.start_time, t.end_time,
       t.start_lat, t.start_lng, t.end_lat, t.end_lng, t.distance_km,
       t.duration_s, t.max_speed_kmh, t.avg_speed_kmh, t.source
FROM reporting.v_trips t
WHERE t.start_time < (SELECT coalesce($6 AT TIME ZONE tracksolid.fleet_timezone(),
                                      'infinity'))
  AND t.span_end > (SELECT coalesce($5 AT TIME ZONE tracksolid.fleet_timezone(),
                                    '-infinity'))
  AND (coalesce(cardinality($1), 0) = 0
       OR t.vehicle_number_norm = ANY (SELECT reporting.normalize_plate(v)
                                       FROM unnest($1) v)
       OR t.imei = ANY (SELECT trim(v) FROM unnest($1) v))
  AND (nullif(trim($2), '') IS NULL OR lower(t.driver_name) = lower(trim($2)))
  AND (nullif(trim($3), '') IS NULL OR lower(t.cost_centre) = lower(trim($3)))
  AND (nullif(trim($4), '') IS NULL OR lower(t.city) = lower(trim($4)))
ORDER BY t.start_time, t.trip_id
$$;
COMMENT ON FUNCTION reporting.fn_trips_for_map(
    text[], text, text, text, timestamp, timestamp) IS
    'Trips of reporting.v_trips that overlap [start, end), each once. start and '
    'end are wall-clock times of the fleet zone (tracksolid.settings); NULL is '
    'unbounded. vehicles: plates (normalised) or IMEIs, NULL or empty = all; '
    'driver, cost_centre, city: exact, case-insensitive, NULL or empty = all. '
    'Columns: trip_id, imei, vehicle_number, vehicle_name, driver_name, '
    'cost_centre, city, trip_date (local date of the start), start_time, end_time, '
    'start_lat, start_lng, end_lat, end_lng, distance_km, duration_s, '
    'max_speed_kmh, avg_speed_kmh, source (stream/platform). Ordered by start.';
