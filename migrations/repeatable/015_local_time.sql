-- The fleet's local calendar. Both read tracksolid.settings, so a query that
-- applies them to many rows should call them through a scalar subquery,
-- (SELECT tracksolid.local_today()), which is evaluated once per query.

-- The local date of a timestamp in the fleet zone.
CREATE OR REPLACE FUNCTION tracksolid.local_date(ts timestamptz) RETURNS date
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT (ts AT TIME ZONE tracksolid.fleet_timezone())::date $$;

-- Today in the fleet zone.
CREATE OR REPLACE FUNCTION tracksolid.local_today() RETURNS date
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT tracksolid.local_date(now()) $$;
