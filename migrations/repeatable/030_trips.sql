-- reporting.v_trips: one row per drive, with the vehicle's registry details.
--
-- The same drive can arrive twice: once derived from positions by the stream
-- (source 'stream') and once from the platform's jimi.device.track.mileage
-- (source 'platform'). A trip is hidden when another trip of the same device
-- overlaps it in time and ranks higher: platform before stream (the platform's
-- distance comes from the device odometer), then the most recently written, then
-- the larger trip_id. A trip's span is [start_time, end_time), at least one
-- second long; span_end is its end, stored so that range queries can use an
-- index.
--
-- An open trip (end_time null: a drive still in progress) spans up to where it
-- has been seen, tracksolid.open_trip_end, and its duration_s is the time from
-- its start to there. Both sides of the overlap rule use that span, so an open
-- trip hides, and is hidden by, what overlaps the part of it already driven.
-- The view is as fresh as its last refresh, so an open trip's span lags the
-- device by up to one refresh interval.
--
-- (SELECT tracksolid.fleet_timezone()) rather than a bare call: the subquery is
-- evaluated once per query, the function once per row.
DROP MATERIALIZED VIEW IF EXISTS reporting.v_trips CASCADE;

-- The second is added in UTC because timestamptz + interval is only STABLE: with
-- every operator immutable the planner inlines the function, which makes the
-- overlap rule several times cheaper to evaluate than a call per pair of trips.
CREATE OR REPLACE FUNCTION tracksolid.trip_span(
    start_time timestamptz, end_time timestamptz
) RETURNS tstzrange
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
SELECT tstzrange(start_time,
                 greatest(coalesce(end_time, start_time),
                          ((start_time AT TIME ZONE 'UTC') + interval '1 second')
                              AT TIME ZONE 'UTC'))
$$;

-- Where an open trip has got to: the device's latest fix, but no later than the
-- next trip that the same source started for the device, because one source's
-- trips of a vehicle follow one another. NULL when neither is known; the span
-- is then one second. A device that went silent bounds the trip at its last
-- fix. A trip that its writer never closed, on a device that keeps reporting,
-- grows until its source's next trip or, without one, with every fix.
CREATE OR REPLACE FUNCTION tracksolid.open_trip_end(
    imei text, source text, start_time timestamptz
) RETURNS timestamptz
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
SELECT least(
    (SELECT lp.gps_time FROM tracksolid.live_positions lp
     WHERE lp.imei = open_trip_end.imei),
    (SELECT min(n.start_time) FROM tracksolid.trips n
     WHERE n.imei = open_trip_end.imei
       AND n.source = open_trip_end.source
       AND n.start_time > open_trip_end.start_time))
$$;

CREATE MATERIALIZED VIEW reporting.v_trips AS
-- Only trips of one island can overlap: an island is a run of a device's trips,
-- in start order, each starting before the furthest end of those before it.
-- Comparing the trips of each island rather than every pair of a device's trips
-- keeps the refresh proportional to the trips, however long the history.
WITH seen AS (
    -- coalesce calls open_trip_end for open trips only.
    SELECT t.*,
           coalesce(t.end_time,
                    tracksolid.open_trip_end(t.imei, t.source, t.start_time))
               AS seen_end
    FROM tracksolid.trips t
), spans AS (
    SELECT s.*,
           tracksolid.trip_span(s.start_time, s.seen_end) AS span,
           max(upper(tracksolid.trip_span(s.start_time, s.seen_end))) OVER (
               PARTITION BY s.imei ORDER BY s.start_time, s.trip_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach_before
    FROM seen s
), islands AS (
    SELECT p.*,
           count(*) FILTER (WHERE p.reach_before IS NULL
                                  OR p.reach_before <= p.start_time) OVER (
               PARTITION BY p.imei ORDER BY p.start_time, p.trip_id) AS island
    FROM spans p
)
SELECT t.trip_id,
       t.imei,
       coalesce(d.vehicle_number, t.vehicle_number) AS vehicle_number,
       coalesce(d.vehicle_number_norm, reporting.normalize_plate(t.vehicle_number))
           AS vehicle_number_norm,
       d.vehicle_name,
       coalesce(nullif(t.driver_name, ''), d.driver_name) AS driver_name,
       d.cost_centre,
       d.city,
       d.device_group,
       t.start_time,
       t.end_time,
       (t.start_time AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::date
           AS trip_date,
       upper(t.span) AS span_end,
       t.start_lat,
       t.start_lng,
       t.end_lat,
       t.end_lng,
       t.distance_km,
       CASE WHEN t.end_time IS NULL
            THEN extract(epoch FROM greatest(t.seen_end, t.start_time)
                                    - t.start_time)::integer
            ELSE coalesce(t.duration_s,
                          extract(epoch FROM t.end_time - t.start_time)::integer)
       END AS duration_s,
       t.max_speed_kmh,
       t.avg_speed_kmh,
       t.source,
       t.distance_source,
       t.updated_at
FROM islands t
LEFT JOIN tracksolid.devices d ON d.imei = t.imei
WHERE NOT EXISTS (
    SELECT 1
    FROM islands o
    WHERE o.imei = t.imei
      AND o.island = t.island
      AND o.trip_id <> t.trip_id
      AND o.span && t.span
      AND (o.source = 'platform', o.updated_at, o.trip_id)
          > (t.source = 'platform', t.updated_at, t.trip_id)
)
-- Stored in start order, the order fn_trips_for_map returns: the planner then
-- reads a range through ix_v_trips_start_time instead of sorting it. A
-- concurrent refresh appends new trips, mostly the latest, so the order holds.
ORDER BY t.start_time, t.trip_id;

CREATE UNIQUE INDEX ix_v_trips_trip_id ON reporting.v_trips (trip_id);
CREATE INDEX ix_v_trips_start_time ON reporting.v_trips (start_time);
CREATE INDEX ix_v_trips_span_end ON reporting.v_trips (span_end);
CREATE INDEX ix_v_trips_vehicle ON reporting.v_trips (vehicle_number_norm, start_time);
COMMENT ON MATERIALIZED VIEW reporting.v_trips IS
    'Each drive once (platform trips win over overlapping stream trips), with the '
    'vehicle''s plate, driver, cost centre and city and its local trip_date. '
    'Refreshed by reporting.refresh_v_trips().';

-- Refresh v_trips without blocking readers and note it in reporting.refresh_log.
-- Callers serialise refreshes themselves (the API takes an advisory lock).
CREATE OR REPLACE FUNCTION reporting.refresh_v_trips() RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    rows bigint;
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY reporting.v_trips;
    SELECT count(*) INTO rows FROM reporting.v_trips;
    INSERT INTO reporting.refresh_log (relation, started_at, finished_at, row_count)
    VALUES ('reporting.v_trips', started, clock_timestamp(), rows);
    RETURN rows;
END $$;
COMMENT ON FUNCTION reporting.refresh_v_trips() IS
    'Refresh reporting.v_trips concurrently, log it in reporting.refresh_log and '
    'return its row count.';
