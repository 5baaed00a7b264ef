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

-- The longest gap between two fixes that a step may span and still count, in
-- seconds: where the vehicle went while its device was silent was not observed.
-- The migrate command writes it from FLEETSTREAM_MAX_FIX_GAP_SECONDS.
CREATE OR REPLACE FUNCTION tracksolid.max_fix_gap_seconds() RETURNS double precision
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT coalesce(
    (SELECT value::double precision FROM tracksolid.settings
     WHERE key = 'max_fix_gap_seconds'),
    3600)
$$;

-- Whether the step between two consecutive fixes counts towards distance:
--   * time moves forward by at most max_gap_s (a longer silence was not
--     observed, and a straight line across it would credit days nobody drove),
--   * its implied speed is at most 250 km/h (a jump beyond that is a bad fix,
--     not a drive), and
--   * the vehicle moved: the fixes are at least 30 m apart, or the faster end
--     reports >= 3 km/h, or, when neither end reports a speed, the step's own
--     speed is >= 3 km/h (a device logging every second moves a few metres a
--     step; calling those jitter would lose the drive).
-- These are the stream's rules (processors/distance.py, default settings), so
-- both daily figures agree. NULL (no previous fix) counts as no.
DROP FUNCTION IF EXISTS tracksolid.step_counts(
    double precision, double precision, double precision, double precision);
CREATE OR REPLACE FUNCTION tracksolid.step_counts(
    step_m double precision, step_s double precision,
    speed_kmh double precision, prev_speed_kmh double precision,
    max_gap_s double precision
) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT step_s > 0
   AND step_s <= max_gap_s
   AND step_m / step_s * 3.6 <= 250
   AND (step_m >= 30
        OR coalesce(greatest(speed_kmh, prev_speed_kmh), step_m / step_s * 3.6) >= 3)
$$;

-- Length in km of the path through the fixes, taken in time order, counting
-- the steps that tracksolid.step_counts accepts. Callers pass only satellite
-- (GPS) fixes: cell-tower and Wi-Fi positions wander by hundreds of metres.
-- STABLE because it reads the gap setting; a continuous aggregate keeps the
-- figures of the setting in force when a day was materialised, which is why its
-- definition records the gap and is rebuilt when it changes.
CREATE OR REPLACE FUNCTION tracksolid.gps_path_km(points tracksolid.path_point[])
    RETURNS double precision
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT coalesce(sum(step_m) FILTER (
           WHERE tracksolid.step_counts(step_m, step_s, speed_kmh, prev_speed_kmh,
                                        (SELECT tracksolid.max_fix_gap_seconds()))
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

-- Whether a day's odometer readings measure its distance. The readings are the
-- positive ones (a zero is a device that lost its counter); the day needs two,
-- less than 2000 km apart. A counter that was reset, rolled over or misread
-- once leaves the day's earliest reading above its lowest, or its latest below
-- its highest, by more than 1 km of slack (counters that tick by the kilometre,
-- pushes in metres against polls rounded to kilometres); and the readings may
-- not move faster than 250 km/h from the earliest to the latest, again with 1 km
-- of slack. The stream applies the same checks (processors/mileage.py). Only the
-- extremes are compared, so a misread that stays between them goes unseen.
-- The daily view was built on the functions this replaces; it is recreated by
-- the files that follow, which run again whenever this one does.
DROP FUNCTION IF EXISTS tracksolid.daily_distance_km(
    bigint, double precision, double precision) CASCADE;
DROP FUNCTION IF EXISTS tracksolid.daily_distance_source(
    bigint, double precision) CASCADE;
CREATE OR REPLACE FUNCTION tracksolid.odometer_usable(
    readings bigint, delta_m double precision, min_m double precision,
    first_m double precision, last_m double precision, span_s double precision
) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(
    readings >= 2
    AND delta_m >= 0 AND delta_m < 2e6
    AND first_m - min_m <= 1000
    AND min_m + delta_m - last_m <= 1000
    AND delta_m <= 250 * span_s / 3.6 + 1000,
    false)
$$;
