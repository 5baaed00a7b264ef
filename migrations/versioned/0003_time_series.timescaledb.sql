-- Time series on TimescaleDB: hypertables chunked by day.

CREATE TABLE tracksolid.position_history (
    imei text NOT NULL,
    gps_time timestamptz NOT NULL,
    lat double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lng double precision NOT NULL CHECK (lng BETWEEN -180 AND 180),
    speed_kmh double precision,
    direction_deg integer,
    acc_on boolean,
    pos_type text NOT NULL DEFAULT 'UNKNOWN',
    satellites integer,
    altitude_m double precision,
    reupload boolean,
    odometer_m double precision,
    source text NOT NULL,
    origin text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (imei, gps_time)
);
SELECT create_hypertable(
    'tracksolid.position_history', by_range('gps_time', INTERVAL '1 day')
);
COMMENT ON TABLE tracksolid.position_history IS
    'Every accepted fix, one per device and gps_time.';

CREATE TABLE tracksolid.heartbeats (
    imei text NOT NULL,
    heartbeat_time timestamptz NOT NULL,
    acc_on boolean,
    power_level integer,
    gsm_signal integer,
    gps_signal integer,
    voltage_v double precision,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, heartbeat_time)
);
SELECT create_hypertable(
    'tracksolid.heartbeats', by_range('heartbeat_time', INTERVAL '1 day')
);
COMMENT ON TABLE tracksolid.heartbeats IS
    'Device heartbeats (pushed status packets).';

CREATE TABLE tracksolid.fuel_readings (
    imei text NOT NULL,
    reading_time timestamptz NOT NULL,
    fuel_level_pct double precision,
    fuel_litres double precision,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, reading_time)
);
SELECT create_hypertable(
    'tracksolid.fuel_readings', by_range('reading_time', INTERVAL '1 day')
);
COMMENT ON TABLE tracksolid.fuel_readings IS
    'Fuel sensor readings.';

CREATE TABLE tracksolid.temperature_readings (
    imei text NOT NULL,
    sensor integer NOT NULL DEFAULT 0,
    reading_time timestamptz NOT NULL,
    temperature_c double precision,
    humidity_pct double precision,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, sensor, reading_time)
);
SELECT create_hypertable(
    'tracksolid.temperature_readings', by_range('reading_time', INTERVAL '1 day')
);
COMMENT ON TABLE tracksolid.temperature_readings IS
    'Temperature (and humidity) sensor readings.';
