-- reporting.v_trips: one row per drive, with the vehicle's registry details.
--
-- The same drive can arrive twice: once derived from positions by the stream
-- (source 'stream') and once from the platform's jimi.device.track.mileage
-- (source 'platform'). A trip is hidden when another trip of the same device
-- overlaps it in time and ranks higher: platform before stream (the platform's
-- distance comes from the device odometer), then the most recently written, then
-- the larger trip_id. A trip's span is [start_time, end_time), at least one
-- second long, and an open trip (end_time null) spans one second; span_end is
-- its end, stored so that range queries can use an index.
--
-- (SELECT tracksolid.fleet_timezone()) rather than a bare call: the subquery is
-- evaluated once per query, the function once per row.
DROP MATERIALIZED VIEW IF EXISTS reporting.v_trips CASCADE;

CREATE OR REPLACE FUNCTION tracksolid.trip_span(
    start_time timestamptz, end_time timestamptz
) RETURNS tstzrange
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
SELECT tstzrange(start_time,
                 greatest(coalesce(end_time, start_time),
                          start_time + interval '1 second'))
$$;

CREATE MATERIALIZED VIEW reporting.v_trips AS
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
       upper(tracksolid.trip_span(t.start_time, t.end_time)) AS span_end,
       t.start_lat,
       t.start_lng,
       t.end_lat,
       t.end_lng,
       t.distance_km,
       coalesce(t.duration_s,
                extract(epoch FROM t.end_time - t.start_time)::integer) AS duration_s,
       t.max_speed_kmh,
       t.avg_speed_kmh,
       t.source,
       t.distance_source,
       t.updated_at
FROM tracksolid.trips t
LEFT JOIN tracksolid.devices d ON d.imei = t.imei
WHERE NOT EXISTS (
    SELECT 1
    FROM tracksolid.trips o
    WHERE o.imei = t.imei
      AND o.trip_id <> t.trip_id
      AND o.start_time < upper(tracksolid.trip_span(t.start_time, t.end_time))
      AND tracksolid.trip_span(o.start_time, o.end_time)
          && tracksolid.trip_span(t.start_time, t.end_time)
      AND (o.source = 'platform', o.updated_at, o.trip_id)
          > (t.source = 'platform', t.updated_at, t.trip_id)
);

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
