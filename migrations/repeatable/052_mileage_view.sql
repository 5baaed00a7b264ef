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
       tracksolid.daily_distance_km(m.odometer_readings, m.odometer_delta_m, m.gps_km)
           AS distance_km,
       tracksolid.daily_distance_source(m.odometer_readings, m.odometer_delta_m)
           AS distance_source,
       m.gps_km,
       m.odometer_delta_m
FROM tracksolid.v_mileage_daily_cagg m;
COMMENT ON VIEW tracksolid.v_mileage_daily IS
    'Kilometres driven per vehicle and local day: from the device odometer when '
    'it reported, else from the GPS path (satellite fixes, jitter and bad jumps '
    'left out). distance_source says which.';
