-- Daily distance with the figure to report and where it comes from; the same on
-- both flavours.
DROP VIEW IF EXISTS tracksolid.v_mileage_daily CASCADE;
CREATE VIEW tracksolid.v_mileage_daily AS
SELECT m.imei,
       (m.day_start AT TIME ZONE (SELECT tracksolid.fleet_timezone()))::date
           AS local_date,
       m.day_start,
       m.fixes,
       m.first_fix,
       m.last_fix,
       m.max_speed_kmh,
       CASE WHEN o.usable THEN m.odometer_delta_m / 1000 ELSE m.gps_km END
           AS distance_km,
       CASE WHEN o.usable THEN 'odometer' ELSE 'gps' END AS distance_source,
       m.gps_km,
       m.odometer_delta_m
FROM tracksolid.v_mileage_daily_cagg m
CROSS JOIN LATERAL (
    SELECT tracksolid.odometer_usable(m.odometer_readings, m.odometer_delta_m,
                                      m.odometer_min_m, m.odometer_first_m,
                                      m.odometer_last_m, m.odometer_span_s) AS usable
) o;
COMMENT ON VIEW tracksolid.v_mileage_daily IS
    'Kilometres driven per vehicle and local day: from the device odometer when '
    'its readings are plausible (no reset, jump or backward run), else from the '
    'GPS path (satellite fixes; jitter, bad jumps and gaps left out). '
    'distance_source says which.';
