-- Device registry, latest fixes, Open API bookkeeping and the platform's summaries.

-- Plates are compared through reporting.normalize_plate; its rule lives in the
-- repeatable functions file, which replaces this first definition.
CREATE FUNCTION reporting.normalize_plate(p text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT nullif(upper(regexp_replace(p, '[\s\-.]', '', 'g')), '') $$;

CREATE TABLE tracksolid.devices (
    imei text PRIMARY KEY,
    device_name text,
    vehicle_number text,
    vehicle_number_norm text,
    vehicle_name text,
    vehicle_model text,
    vehicle_icon text,
    device_model text,
    sim text,
    vin text,
    driver_name text,
    driver_phone text,
    device_group text,
    enabled boolean,
    expires_at timestamptz,
    activated_at timestamptz,
    account text,
    cost_centre text,
    city text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tracksolid.devices IS
    'One row per tracker. cost_centre and city belong to the operator: sinks never '
    'write them. vehicle_number_norm is always normalize_plate(vehicle_number).';
CREATE INDEX devices_vehicle_number_norm ON tracksolid.devices (vehicle_number_norm);
CREATE INDEX devices_cost_centre ON tracksolid.devices (cost_centre);

-- Whatever a writer sends, the normalised plate follows the one SQL rule.
CREATE FUNCTION tracksolid.devices_normalise_plate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.vehicle_number_norm := reporting.normalize_plate(NEW.vehicle_number);
    RETURN NEW;
END $$;
CREATE TRIGGER devices_normalise_plate
    BEFORE INSERT OR UPDATE ON tracksolid.devices
    FOR EACH ROW EXECUTE FUNCTION tracksolid.devices_normalise_plate();

CREATE TABLE tracksolid.live_positions (
    imei text PRIMARY KEY,
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
    received_at timestamptz NOT NULL
);
COMMENT ON TABLE tracksolid.live_positions IS
    'Latest fix per device; writers only move gps_time forward.';

CREATE TABLE tracksolid.ingestion_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    called_at timestamptz NOT NULL DEFAULT now(),
    account text,
    method text NOT NULL,
    imei_count integer,
    record_count integer,
    result_code integer,
    http_status integer,
    duration_ms integer,
    error text
);
COMMENT ON TABLE tracksolid.ingestion_log IS
    'One row per Open API call: method, result code, records returned, latency.';
CREATE INDEX ingestion_log_called_at ON tracksolid.ingestion_log (called_at);
CREATE INDEX ingestion_log_method_called_at
    ON tracksolid.ingestion_log (method, called_at);

CREATE TABLE tracksolid.api_token_cache (
    account text PRIMARY KEY,
    access_token text NOT NULL,
    refresh_token text,
    expires_at timestamptz NOT NULL,
    obtained_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE tracksolid.api_token_cache IS
    'The shared Open API token of each account, so that one owner renews it.';

CREATE TABLE tracksolid.poll_watermarks (
    imei text NOT NULL,
    method text NOT NULL,
    watermark timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, method)
);
COMMENT ON TABLE tracksolid.poll_watermarks IS
    'Per device and Open API method, the time up to which history has been polled.';

CREATE TABLE tracksolid.trips (
    trip_id text PRIMARY KEY,
    imei text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz,
    start_lat double precision,
    start_lng double precision,
    end_lat double precision,
    end_lng double precision,
    distance_km double precision,
    duration_s integer,
    max_speed_kmh double precision,
    avg_speed_kmh double precision,
    driver_name text,
    vehicle_number text,
    source text NOT NULL CHECK (source IN ('stream', 'platform')),
    distance_source text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time IS NULL OR end_time >= start_time)
);
COMMENT ON TABLE tracksolid.trips IS
    'Drives, from the stream (derived from positions) or the platform '
    '(jimi.device.track.mileage). trip_id is deterministic per source and start, '
    'so a rewrite replaces the same row. end_time is null while a drive is open.';
CREATE INDEX trips_imei_start ON tracksolid.trips (imei, start_time);
CREATE INDEX trips_start_time ON tracksolid.trips (start_time);

CREATE TABLE tracksolid.alarms (
    imei text NOT NULL,
    alarm_type text NOT NULL,
    alarm_time timestamptz NOT NULL,
    alarm_name text,
    lat double precision,
    lng double precision,
    speed_kmh double precision,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, alarm_type, alarm_time)
);
COMMENT ON TABLE tracksolid.alarms IS 'Alarm events, one per device, type and time.';
CREATE INDEX alarms_alarm_time ON tracksolid.alarms (alarm_time);

CREATE TABLE reporting.refresh_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    row_count bigint,
    ok boolean NOT NULL DEFAULT true,
    error text
);
COMMENT ON TABLE reporting.refresh_log IS
    'One row per refresh of a derived relation (reporting.v_trips, daily mileage).';
CREATE INDEX refresh_log_relation_started
    ON reporting.refresh_log (relation, started_at DESC);
