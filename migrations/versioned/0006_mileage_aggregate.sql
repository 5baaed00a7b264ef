-- An aggregate that measures the GPS path of a day's fixes, usable in a TimescaleDB
-- continuous aggregate (which allows no window functions). The state collects the
-- fixes; the final step sorts them by time and measures them with
-- tracksolid.gps_path_km, defined in the repeatable mileage file so that the rule
-- can evolve without touching this file.
CREATE TYPE tracksolid.path_point AS (
    t timestamptz,
    lat double precision,
    lng double precision,
    speed_kmh double precision
);

CREATE FUNCTION tracksolid.path_km_final(points tracksolid.path_point[])
    RETURNS double precision
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN tracksolid.gps_path_km(points);
END $$;

-- NULL inputs (fixes that must not count) are appended and ignored at the end.
CREATE AGGREGATE tracksolid.path_km(tracksolid.path_point) (
    sfunc = array_append,
    stype = tracksolid.path_point[],
    finalfunc = tracksolid.path_km_final,
    combinefunc = array_cat,
    initcond = '{}',
    parallel = safe
);
