-- Daily distance per vehicle, shared by both flavours.
--
-- Great-circle distance in metres on a sphere of the mean Earth radius
-- (6 371 008.8 m); the stream computes trip and daily distance the same way.
-- NULL when any input is NULL. Written to be inlined into the calling query (a
-- plain SQL expression, not STRICT): a function call per fix costs more than
-- the arithmetic. sqrt(h) is capped at 1 by subtracting its excess, because
-- least() would turn a NULL into 1.
CREATE OR REPLACE FUNCTION tracksolid.distance_m(
    lat1 double precision, lng1 double precision,
    lat2 double precision, lng2 double precision
) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT 2 * 6371008.8 * asin(
    sqrt(sin(radians(lat2 - lat1) / 2) ^ 2
         + cos(radians(lat1)) * cos(radians(lat2)) * sin(radians(lng2 - lng1) / 2) ^ 2)
    - greatest(sqrt(sin(radians(lat2 - lat1) / 2) ^ 2
                    + cos(radians(lat1)) * cos(radians(lat2))
                      * sin(radians(lng2 - lng1) / 2) ^ 2) - 1, 0))
$$;

-- Whether the step between two consecutive fixes counts towards distance:
--   * time moves forward and its implied speed is at most 250 km/h (a jump
--     beyond that is a bad fix, not a drive), and
--   * the vehicle moved: either end reports >= 3 km/h, or the fixes are at least
--     30 m apart (so that stationary jitter of a parked vehicle adds nothing,
--     while a drive sampled only at its stops still counts).
-- These are the stream's rules (processors/distance.py, default settings), so
-- both daily figures agree. NULL (no previous fix) counts as no.
CREATE OR REPLACE FUNCTION tracksolid.step_counts(
    step_m double precision, step_s double precision,
    speed_kmh double precision, prev_speed_kmh double precision
) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT step_s > 0
   AND step_m / step_s * 3.6 <= 250
   AND (greatest(speed_kmh, prev_speed_kmh) >= 3 OR step_m >= 30)
$$;

-- Length in km of the path through the fixes, taken in time order, counting
-- the steps that tracksolid.step_counts accepts. Callers pass only satellite
-- (GPS) fixes: cell-tower and Wi-Fi positions wander by hundreds of metres.
CREATE OR REPLACE FUNCTION tracksolid.gps_path_km(points tracksolid.path_point[])
    RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(sum(step_m) FILTER (
           WHERE tracksolid.step_counts(step_m, step_s, speed_kmh, prev_speed_kmh)
       ), 0) / 1000
FROM (
    SELECT tracksolid.distance_m(prev_lat, prev_lng, lat, lng) AS step_m,
           extract(epoch FROM t - prev_t) AS step_s,
           speed_kmh,
           prev_speed_kmh
    FROM (
        SELECT t, lat, lng, speed_kmh,
               lag(t) OVER w AS prev_t,
               lag(lat) OVER w AS prev_lat,
               lag(lng) OVER w AS prev_lng,
               lag(speed_kmh) OVER w AS prev_speed_kmh
        FROM unnest(points) AS p
        WHERE t IS NOT NULL
        WINDOW w AS (ORDER BY t)
    ) pairs
    -- Keeps the inlined distance expression from being evaluated per use.
    OFFSET 0
) steps
$$;

-- Which figure a day reports: the device odometer when it gave at least two
-- readings with a plausible difference (0..2000 km), else the GPS path.
CREATE OR REPLACE FUNCTION tracksolid.daily_distance_km(
    odometer_readings bigint, odometer_delta_m double precision, gps_km double precision
) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN odometer_readings >= 2 AND odometer_delta_m BETWEEN 0 AND 2e6
            THEN odometer_delta_m / 1000 ELSE gps_km END
$$;

CREATE OR REPLACE FUNCTION tracksolid.daily_distance_source(
    odometer_readings bigint, odometer_delta_m double precision
) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN odometer_readings >= 2 AND odometer_delta_m BETWEEN 0 AND 2e6
            THEN 'odometer' ELSE 'gps' END
$$;
