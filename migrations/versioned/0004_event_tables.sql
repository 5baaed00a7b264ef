-- Device events, diagnostics and reports pushed or polled from the platform.
-- Each has a natural key of device and time so that replays rewrite, not add.

CREATE TABLE tracksolid.device_events (
    imei text NOT NULL,
    event_type text NOT NULL,
    event_time timestamptz NOT NULL,
    detail jsonb,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, event_type, event_time)
);
COMMENT ON TABLE tracksolid.device_events IS
    'Status events of a device (power cut, ignition, SOS handled, ...).';
CREATE INDEX device_events_event_time ON tracksolid.device_events (event_time);

CREATE TABLE tracksolid.fault_codes (
    imei text NOT NULL,
    fault_code text NOT NULL,
    reported_at timestamptz NOT NULL,
    description text,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, fault_code, reported_at)
);
COMMENT ON TABLE tracksolid.fault_codes IS 'OBD diagnostic trouble codes reported.';

CREATE TABLE tracksolid.obd_readings (
    imei text NOT NULL,
    reading_time timestamptz NOT NULL,
    rpm integer,
    speed_kmh double precision,
    coolant_c double precision,
    engine_load_pct double precision,
    fuel_level_pct double precision,
    battery_v double precision,
    odometer_m double precision,
    extra jsonb,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, reading_time)
);
COMMENT ON TABLE tracksolid.obd_readings IS 'Engine readings from OBD trackers.';

CREATE TABLE tracksolid.parking_events (
    imei text NOT NULL,
    start_time timestamptz NOT NULL,
    end_time timestamptz,
    kind text NOT NULL DEFAULT 'parking' CHECK (kind IN ('parking', 'idling')),
    lat double precision,
    lng double precision,
    duration_s integer,
    address text,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, kind, start_time)
);
COMMENT ON TABLE tracksolid.parking_events IS
    'Parking (ignition off) and idling (ignition on, stationary) periods.';
CREATE INDEX parking_events_start_time ON tracksolid.parking_events (start_time);

CREATE TABLE tracksolid.lbs_readings (
    imei text NOT NULL,
    reading_time timestamptz NOT NULL,
    mcc integer,
    mnc integer,
    lac integer,
    cell_id bigint,
    signal integer,
    lat double precision,
    lng double precision,
    source text,
    origin text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (imei, reading_time)
);
COMMENT ON TABLE tracksolid.lbs_readings IS
    'Cell-tower (LBS) observations; coarse positions, never used for distance.';

CREATE TABLE tracksolid.geofences (
    geofence_id text PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL DEFAULT 'circle' CHECK (kind IN ('circle', 'polygon')),
    center_lat double precision,
    center_lng double precision,
    radius_m double precision,
    polygon jsonb,
    account text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'circle' OR (center_lat IS NOT NULL AND center_lng IS NOT NULL
                                AND radius_m > 0))
);
COMMENT ON TABLE tracksolid.geofences IS
    'Geofences defined on the platform; polygon is a JSON array of [lat, lng].';
