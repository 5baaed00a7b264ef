-- Reporting views for the dashboard's filters and summaries. All read
-- reporting.v_trips, so they are as fresh as its last refresh; days are local
-- days of the fleet zone and weeks start on Monday. A week or month is truncated
-- from trip_date as a zone-less timestamp: a bare date would be cast to
-- timestamptz in the session's zone, and the arithmetic would depend on it.

-- Dropped first so that a view may change its columns; CASCADE because the
-- views of later files, which may depend on these, are then rebuilt too.
DROP VIEW IF EXISTS reporting.v_live_positions CASCADE;
DROP VIEW IF EXISTS reporting.v_trips_today CASCADE;
DROP VIEW IF EXISTS reporting.v_monthly_summary_cost_centre CASCADE;
DROP VIEW IF EXISTS reporting.v_weekly_summary_cost_centre CASCADE;
DROP VIEW IF EXISTS reporting.v_daily_summary_cost_centre CASCADE;
DROP VIEW IF EXISTS reporting.v_monthly_summary CASCADE;
DROP VIEW IF EXISTS reporting.v_weekly_summary CASCADE;
DROP VIEW IF EXISTS reporting.v_daily_summary CASCADE;
DROP VIEW IF EXISTS reporting.v_filter_cities CASCADE;
DROP VIEW IF EXISTS reporting.v_filter_cost_centres CASCADE;
DROP VIEW IF EXISTS reporting.v_filter_drivers CASCADE;
DROP VIEW IF EXISTS reporting.v_filter_vehicles CASCADE;

CREATE OR REPLACE VIEW reporting.v_filter_vehicles AS
SELECT d.imei,
       d.vehicle_number,
       d.vehicle_number_norm,
       d.vehicle_name,
       d.driver_name,
       d.cost_centre,
       d.city,
       coalesce(t.trips, 0) AS trips,
       t.last_trip_at
FROM tracksolid.devices d
LEFT JOIN (
    SELECT imei, count(*) AS trips, max(start_time) AS last_trip_at
    FROM reporting.v_trips GROUP BY imei
) t ON t.imei = d.imei
WHERE coalesce(d.enabled, true);
COMMENT ON VIEW reporting.v_filter_vehicles IS
    'Vehicles to pick from: every enabled device with its plate, driver, cost '
    'centre, city, number of trips and the start of its last trip.';

CREATE OR REPLACE VIEW reporting.v_filter_drivers AS
SELECT driver_name, count(DISTINCT imei) AS vehicles, sum(trips) AS trips,
       max(last_trip_at) AS last_trip_at
FROM (
    SELECT driver_name, imei, count(*) AS trips, max(start_time) AS last_trip_at
    FROM reporting.v_trips WHERE nullif(trim(driver_name), '') IS NOT NULL
    GROUP BY driver_name, imei
    UNION ALL
    SELECT driver_name, imei, 0, NULL FROM tracksolid.devices
    WHERE nullif(trim(driver_name), '') IS NOT NULL AND coalesce(enabled, true)
) drivers
GROUP BY driver_name;
COMMENT ON VIEW reporting.v_filter_drivers IS
    'Drivers to pick from: every driver named on a device or a trip, with the '
    'vehicles they drove or are assigned, their trips and last trip start.';

CREATE OR REPLACE VIEW reporting.v_filter_cost_centres AS
SELECT cost_centre, count(*) AS vehicles
FROM tracksolid.devices
WHERE nullif(trim(cost_centre), '') IS NOT NULL AND coalesce(enabled, true)
GROUP BY cost_centre;
COMMENT ON VIEW reporting.v_filter_cost_centres IS
    'Cost centres to pick from, with the number of enabled vehicles in each.';

CREATE OR REPLACE VIEW reporting.v_filter_cities AS
SELECT city, count(*) AS vehicles
FROM tracksolid.devices
WHERE nullif(trim(city), '') IS NOT NULL AND coalesce(enabled, true)
GROUP BY city;
COMMENT ON VIEW reporting.v_filter_cities IS
    'Cities to pick from, with the number of enabled vehicles based in each.';

CREATE OR REPLACE VIEW reporting.v_daily_summary AS
SELECT trip_date AS day,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY trip_date;
COMMENT ON VIEW reporting.v_daily_summary IS
    'Per local day: trips started, vehicles and drivers that drove, kilometres, '
    'driving hours, top speed and average trip length.';

CREATE OR REPLACE VIEW reporting.v_weekly_summary AS
SELECT date_trunc('week', trip_date::timestamp)::date AS week_start,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY 1;
COMMENT ON VIEW reporting.v_weekly_summary IS
    'Per week (Monday start, local days): the figures of v_daily_summary.';

CREATE OR REPLACE VIEW reporting.v_monthly_summary AS
SELECT date_trunc('month', trip_date::timestamp)::date AS month_start,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY 1;
COMMENT ON VIEW reporting.v_monthly_summary IS
    'Per calendar month (local days): the figures of v_daily_summary.';

CREATE OR REPLACE VIEW reporting.v_daily_summary_cost_centre AS
SELECT trip_date AS day,
       cost_centre,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY trip_date, cost_centre;
COMMENT ON VIEW reporting.v_daily_summary_cost_centre IS
    'v_daily_summary per cost centre (NULL: vehicles without one).';

CREATE OR REPLACE VIEW reporting.v_weekly_summary_cost_centre AS
SELECT date_trunc('week', trip_date::timestamp)::date AS week_start,
       cost_centre,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY 1, 2;
COMMENT ON VIEW reporting.v_weekly_summary_cost_centre IS
    'v_weekly_summary per cost centre (NULL: vehicles without one).';

CREATE OR REPLACE VIEW reporting.v_monthly_summary_cost_centre AS
SELECT date_trunc('month', trip_date::timestamp)::date AS month_start,
       cost_centre,
       count(*) AS trips,
       count(DISTINCT imei) AS vehicles,
       count(DISTINCT driver_name) AS drivers,
       round(sum(distance_km)::numeric, 2) AS distance_km,
       round((sum(duration_s) / 3600.0)::numeric, 2) AS driving_hours,
       max(max_speed_kmh) AS max_speed_kmh,
       round(avg(distance_km)::numeric, 2) AS avg_trip_km
FROM reporting.v_trips
GROUP BY 1, 2;
COMMENT ON VIEW reporting.v_monthly_summary_cost_centre IS
    'v_monthly_summary per cost centre (NULL: vehicles without one).';

CREATE OR REPLACE VIEW reporting.v_trips_today AS
SELECT *
FROM reporting.v_trips
WHERE trip_date = (SELECT tracksolid.local_today());
COMMENT ON VIEW reporting.v_trips_today IS
    'Trips that started today (local day of the fleet zone).';

CREATE OR REPLACE VIEW reporting.v_live_positions AS
SELECT * FROM reporting.fn_live_positions(NULL, NULL);
COMMENT ON VIEW reporting.v_live_positions IS
    'Where every enabled vehicle is now, with its driver, cost centre and status '
    '(moving, idle, parked, offline); the unfiltered fn_live_positions.';
