"""Time the API's SQL functions on a fleet-sized database.

Generates, with SQL ``generate_series``, ``--vehicles`` devices reporting every
``--interval-seconds`` for ``--days`` days (500 x 14 x 30 s is about 20 million
fixes), four drives a day per vehicle, each vehicle leaving at its own time,
written by the stream with a platform copy of every fourth, and the latest fix
of each vehicle. Then times:

* ``fn_vehicle_track(plate, 24)`` for random vehicles,
* ``fn_trips_for_map`` of all vehicles over the whole period,
* ``fn_live_positions(NULL, NULL)``,

each ``--runs`` times, and prints the median and 95th percentile of the
server's execution time, judged against the 50 ms target, and of the client's
round trip, which adds receiving and decoding every row; then,
once each, what the API's refresh loop runs (v_trips, daily mileage,
partitions). Uses
``DATABASE_URL`` (a server where databases may be created) or starts the
embedded PostgreSQL. Run: ``python -m bench.bench_functions
--vehicles 50 --days 2`` for a quick look; ``--figures PATH`` also writes the
headline figures there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.figures import Figure, write_figures
from fleetstream.db import with_database
from fleetstream.embedded import EmbeddedPostgres, free_port
from migrations.runner import migrate

TARGET_MS = 50.0

DEVICES_SQL = """
INSERT INTO tracksolid.devices (imei, vehicle_number, vehicle_name, driver_name,
                                cost_centre, city, enabled)
SELECT (860000000000000 + i)::text,
       format('K%s %s%s', chr(65 + i % 26), lpad((i % 1000)::text, 3, '0'),
              chr(65 + (i / 26) % 26)),
       format('Truck %s', i),
       format('Driver %s', i),
       format('Cost centre %s', i % 10),
       (ARRAY['Nairobi', 'Mombasa', 'Nakuru', 'Kisumu', 'Eldoret'])[1 + i % 5],
       true
FROM generate_series(1, $1) i
"""

# One day of fixes of every vehicle: a slow loop around its home, moving 06:00 to
# 18:00 UTC and parked otherwise.
POSITIONS_SQL = """
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    direction_deg, acc_on, pos_type, odometer_m, source, origin, received_at)
SELECT (860000000000000 + v)::text,
       t,
       -1.3 + v * 0.001 + 0.05 * sin(extract(epoch FROM t) / 3600),
       36.8 + 0.05 * cos(extract(epoch FROM t) / 3600),
       CASE WHEN extract(hour FROM t) BETWEEN 6 AND 17 THEN 40 + v % 30 ELSE 0 END,
       (extract(epoch FROM t)::bigint / 60 % 360)::int,
       extract(hour FROM t) BETWEEN 6 AND 17,
       CASE WHEN extract(epoch FROM t)::bigint % 3600 = 0 THEN 'LBS' ELSE 'GPS' END,
       NULL,
       'push', 'pushgps', t
FROM generate_series(1, $1) v,
     generate_series($2::timestamptz, $3::timestamptz - interval '1 microsecond',
                     make_interval(secs => $4)) t
"""

TRIPS_SQL = """
INSERT INTO tracksolid.trips (trip_id, imei, start_time, end_time, start_lat,
    start_lng, end_lat, end_lng, distance_km, duration_s, max_speed_kmh,
    avg_speed_kmh, source, distance_source)
SELECT format('%s-%s-%s', src, v, extract(epoch FROM s)::bigint),
       (860000000000000 + v)::text, s + shift + stagger,
       s + shift + stagger + interval '2 hours',
       -1.3, 36.8, -1.31, 36.81, 80 + v % 7, 7200, 70, 40, src,
       CASE src WHEN 'stream' THEN 'gps' ELSE 'odometer' END
FROM generate_series(1, $1) v,
     generate_series($2::timestamptz, $3::timestamptz - interval '3 hours',
                     interval '6 hours') s,
     (VALUES ('stream', interval '0'), ('platform', interval '2 minutes'))
         AS x (src, shift),
     -- Each vehicle leaves at its own time, up to an hour after the others.
     LATERAL (SELECT make_interval(secs => v * 37 % 3600)) AS y (stagger)
WHERE src = 'stream' OR (extract(epoch FROM s)::bigint / 21600 + v) % 4 = 0
"""

LIVE_SQL = """
INSERT INTO tracksolid.live_positions
SELECT DISTINCT ON (imei) imei, gps_time, lat, lng, speed_kmh, direction_deg, acc_on,
       pos_type, satellites, altitude_m, reupload, odometer_m, source, origin,
       received_at
FROM tracksolid.position_history
WHERE gps_time >= $1::timestamptz - interval '1 hour'
ORDER BY imei, gps_time DESC
"""


async def load(conn, vehicles: int, days: int, interval_s: int) -> None:
    """Fill the database; print how long each part took."""
    end = await conn.fetchval("SELECT date_trunc('minute', now())")
    start = await conn.fetchval(
        "SELECT $1::timestamptz - make_interval(days => $2)", end, days
    )
    await conn.execute(DEVICES_SQL, vehicles)
    await conn.execute("SELECT tracksolid.ensure_partitions()")
    began = time.perf_counter()
    day = start
    while day < end:
        next_day = min(end, day + (end - start) / days)
        await conn.execute(POSITIONS_SQL, vehicles, day, next_day, float(interval_s))
        day = next_day
    rows = await conn.fetchval("SELECT count(*) FROM tracksolid.position_history")
    print(f"positions: {rows} rows in {time.perf_counter() - began:.0f} s")
    began = time.perf_counter()
    await conn.execute(TRIPS_SQL, vehicles, start, end)
    await conn.execute(LIVE_SQL, end)
    visible = await conn.fetchval("SELECT reporting.refresh_v_trips()")
    await conn.execute("ANALYZE")
    print(f"trips: {visible} visible, derived in {time.perf_counter() - began:.0f} s")


async def timed(
    conn, runs: int, query: str, *args_of_run
) -> tuple[list[float], list[float], int]:
    """Return the server's execution times, client round-trip times and row count.

    The server time is what PostgreSQL spends answering (``EXPLAIN ANALYZE``
    without per-node timing, which would slow it); the round trip adds sending
    every row and decoding it in Python, which dominates for large answers.
    """
    server, client, rows = [], [], 0
    for run in range(runs):
        args = args_of_run[run % len(args_of_run)] if args_of_run else ()
        began = time.perf_counter()
        rows = len(await conn.fetch(query, *args))
        client.append((time.perf_counter() - began) * 1000)
        plan = await conn.fetchval(
            f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}", *args
        )
        server.append(json.loads(plan)[0]["Execution Time"])
    return server, client, rows


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def report(name: str, server: list[float], client: list[float], rows: int) -> list:
    """Print a function's times; return its figures, the server's p95 the headline.

    A function answers within the target when PostgreSQL does; what a client
    then spends receiving the rows depends on the client and is reported
    beside it (the API asks for at most 5,000 trips).
    """
    verdict = "ok" if p95(server) <= TARGET_MS else "over target"
    print(
        f"{name:<40} rows {rows:>6}  server median {statistics.median(server):6.1f} "
        f"p95 {p95(server):6.1f} ms  client median {statistics.median(client):6.1f} "
        f"p95 {p95(client):6.1f} ms  {verdict}"
    )
    return [
        Figure(
            f"{name} server p95", "ms", p95(server), maximum=TARGET_MS, on_ratio=False
        ),
        Figure(f"{name} client p95", "ms", p95(client), on_ratio=False),
    ]


# Five minutes of every vehicle's fixes, received now: what the refresh loop
# finds new at each run while the fleet drives.
NEW_FIXES_SQL = """
INSERT INTO tracksolid.position_history (imei, gps_time, lat, lng, speed_kmh,
    direction_deg, acc_on, pos_type, source, origin, received_at)
SELECT (860000000000000 + v)::text, t, -1.3 + v * 0.001, 36.8, 40, 0, true, 'GPS',
       'push', 'pushgps', now()
FROM generate_series(1, (SELECT count(*) FROM tracksolid.devices)) v,
     generate_series(now() - interval '5 minutes', now() - interval '1 second',
                     make_interval(secs => $1)) t
ON CONFLICT DO NOTHING
"""


async def time_refreshes(conn, interval_s: int) -> None:
    """Time what the API's refresh loop runs, once each.

    On plain PostgreSQL the loop's daily mileage run recomputes the
    vehicle-days that received fixes since its previous run: the first run
    fills the last 30 days, later ones mostly today's, timed after five
    minutes of new fixes. Recomputing the last two local days whole, what
    the loop did before, is timed for comparison.
    """
    steps = [
        ("refresh_v_trips()", "SELECT reporting.refresh_v_trips()"),
        (
            "refresh_mileage_daily(last 2 days)",
            "SELECT tracksolid.refresh_mileage_daily(now() - interval '1 day', NULL)",
        ),
        (
            "mileage changes, first run (30 days)",
            "SELECT tracksolid.refresh_mileage_daily_changes()",
        ),
        (
            "mileage changes, 5 min of new fixes",
            "SELECT tracksolid.refresh_mileage_daily_changes()",
        ),
        ("ensure_partitions()", "SELECT tracksolid.ensure_partitions()"),
    ]
    for name, sql in steps:
        if name.endswith("new fixes"):
            await conn.execute(NEW_FIXES_SQL, float(interval_s))
        began = time.perf_counter()
        rows = await conn.fetchval(sql)
        took = time.perf_counter() - began
        print(f"{name:<40} rows {rows:>6}  took {took * 1000:9.1f} ms")


async def bench(url: str, args: argparse.Namespace) -> list[Figure]:
    await migrate(url)
    conn = await asyncpg.connect(url, server_settings={"timezone": "UTC"})
    try:
        await load(conn, args.vehicles, args.days, args.interval_seconds)
        plates = [
            r["vehicle_number"]
            for r in await conn.fetch("SELECT vehicle_number FROM tracksolid.devices")
        ]
        rng = random.Random(7)
        track_args = [(rng.choice(plates), 24) for _ in range(args.runs)]
        first = await conn.fetchval(
            "SELECT (min(start_time) AT TIME ZONE tracksolid.fleet_timezone()) "
            "FROM tracksolid.trips"
        )
        now = await conn.fetchval(
            "SELECT now() AT TIME ZONE tracksolid.fleet_timezone()"
        )
        print(
            f"{args.vehicles} vehicles x {args.days} days x {args.interval_seconds} s"
        )
        figures = []
        figures.extend(
            report(
                "fn_vehicle_track(plate, 24)",
                *await timed(
                    conn,
                    args.runs,
                    "SELECT * FROM reporting.fn_vehicle_track($1, $2)",
                    *track_args,
                ),
            )
        )
        figures.extend(
            report(
                "fn_trips_for_map(all, whole period)",
                *await timed(
                    conn,
                    args.runs,
                    "SELECT * FROM reporting.fn_trips_for_map("
                    "NULL, NULL, NULL, NULL, $1, $2)",
                    (first, now),
                ),
            )
        )
        figures.extend(
            report(
                "fn_trips_for_map(one cost centre, 1 day)",
                *await timed(
                    conn,
                    args.runs,
                    "SELECT * FROM reporting.fn_trips_for_map("
                    "NULL, NULL, 'Cost centre 3', NULL, $1, $2)",
                    (now - (now - first) / args.days, now),
                ),
            )
        )
        figures.extend(
            report(
                "fn_live_positions(NULL, NULL)",
                *await timed(
                    conn,
                    args.runs,
                    "SELECT * FROM reporting.fn_live_positions(NULL, NULL)",
                ),
            )
        )
        await time_refreshes(conn, args.interval_seconds)
        return figures
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> list[Figure]:
    server_url = os.environ.get("DATABASE_URL")
    server = None
    if not server_url:
        scratch = Path(tempfile.mkdtemp(prefix="fs-bench-pg-"))
        server = EmbeddedPostgres(scratch, free_port()).start()
        server_url = server.url
    name = f"fs_bench_{os.getpid()}"
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        return await bench(with_database(server_url, name), args)
    finally:
        if not args.keep:
            admin = await asyncpg.connect(with_database(server_url, "postgres"))
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        if server is not None:
            server.stop()
            shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=500)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--interval-seconds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--figures", help="also write the headline figures here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    write_figures(arguments.figures, asyncio.run(main(arguments)))
