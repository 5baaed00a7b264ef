"""The sink stage's /metrics endpoint, scraped over HTTP from real running sinks."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time

import httpx
import pytest
from test_sinks import IMEIS, device, fetch, position, produce, until

from fleetstream.embedded import free_port
from fleetstream.errors import ConfigError
from sinks.kinds import DEVICE, POSITION, SINKS
from sinks.metrics import bind
from sinks.runner import run_sinks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z_]+="[^"\\]*",?)*)\} (\S+)$')
HISTORY = "tracksolid.position_history"


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Return every sample by name and labels; fail on a malformed line."""
    declared: set[str] = set()
    samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(sum|count)$", "", name)
        assert name in declared or family in declared, f"{name} has no TYPE line"
        key = (name, frozenset(re.findall(r'([a-z_]+)="([^"]*)"', labels)))
        assert key not in samples, f"{line!r} repeats a series"
        samples[key] = float(value)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


async def scraped(port: int, name: str, **labels: str) -> float | None:
    """Return one sample, or None while the server or the series is not there."""
    try:
        return value(await scrape(port), name, **labels)
    except (httpx.TransportError, KeyError):
        return None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_metrics_match_what_the_sinks_wrote(make_settings, database_url):
    port = free_port()
    settings = make_settings(database_url=database_url, sink_metrics_port=port)
    fixes = [position(imei, m) for imei in IMEIS for m in range(4)]
    # Fixes sent twice add records but no rows, so the two counts never meet:
    # 25 records, at most 12 + 12 rows. One record is undecodable.
    await produce(settings, "position", fixes + fixes + [b"\x00not avro"])
    await produce(settings, "device", [device(IMEIS[0], 1)])
    began = time.time()
    stop = asyncio.Event()
    task = asyncio.create_task(run_sinks(settings, stop, (POSITION, DEVICE)))
    try:
        records = "fleetstream_sink_records_total"
        await until(
            lambda: _equals(
                scraped(port, records, sink="position"), 2 * len(fixes) + 1
            ),
            what="position records in the metrics",
        )
        await until(
            lambda: _equals(scraped(port, records, sink="device"), 1),
            what="device records in the metrics",
        )
        samples = await scrape(port)
        scraped_at = time.time()
        stored = await fetch(settings, f"SELECT count(*) FROM {HISTORY}")
    finally:
        stop.set()
        sinks = {s.spec.kind: s for s in await asyncio.wait_for(task, 30)}

    def rows(sink: str, table: str) -> float:
        return value(
            samples, "fleetstream_sink_rows_written_total", sink=sink, table=table
        )

    assert rows("position", HISTORY) == len(fixes) == stored[0][0]
    assert rows("position", "tracksolid.live_positions") >= len(IMEIS)
    assert rows("device", "tracksolid.devices") == 1
    for kind, sink in sinks.items():
        stats = sink.stats

        def sample(name: str, kind: str = kind) -> float:
            return value(samples, f"fleetstream_sink_{name}", sink=kind)

        assert sample("records_total") == stats.records
        for table, count in stats.rows_by_table.items():
            assert rows(kind, table) == count
        assert sample("batch_seconds_count") == stats.batches >= 1
        assert sample("batch_seconds_sum") == stats.batch_seconds_total > 0
        assert sample("batch_seconds_max") == stats.batch_seconds_max > 0
        assert sample("batch_seconds_max") <= sample("batch_seconds_sum")
        assert began <= sample("last_commit_timestamp_seconds") <= scraped_at
        assert sample("assigned_partitions") == settings.topic_partitions
        assert sample("assignments_total") == stats.assignments >= 1
        assert sample("retries_total") == sample("rewinds_total") == 0
    assert value(samples, "fleetstream_sink_dead_letters_total", sink="position") == 1
    assert value(samples, "fleetstream_sink_dead_letters_total", sink="device") == 0

    # The server went with the sinks: nothing answers and the port is free again.
    with pytest.raises(httpx.ConnectError):
        await scrape(port)
    assert port_is_free(port)


async def _equals(pending, expected: float) -> bool:
    return await pending == expected


def _stage_env(settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLEETSTREAM_ENVIRONMENT": "test",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "FLEETSTREAM_BROKER_PROFILE": settings.broker_profile,
        "FLEETSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": settings.database_url,
        **extra,
    }


async def _sink_command(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fleetstream.cli",
        "sink",
        env=env,
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sink_command_serves_metrics_until_sigterm(settings):
    port = free_port()
    fixes = [position(imei, m) for imei in IMEIS for m in range(3)]
    await produce(settings, "position", fixes)
    stage = await _sink_command(
        _stage_env(settings, FLEETSTREAM_SINK_METRICS_PORT=str(port))
    )
    try:
        rows = "fleetstream_sink_rows_written_total"
        await until(
            lambda: _equals(
                scraped(port, rows, sink="position", table=HISTORY), len(fixes)
            ),
            timeout=60,
            what="the command's metrics",
        )
        samples = await scrape(port)
    finally:
        stage.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(stage.communicate(), 60)

    log = stderr.decode()
    assert stage.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    # Every declared sink has its series, idle ones included.
    assert {
        dict(labels)["sink"]
        for name, labels in samples
        if name == "fleetstream_sink_records_total"
    } == {sink.kind for sink in SINKS}
    assert value(samples, "fleetstream_sink_records_total", sink="position") == 9
    assert "sink metrics stopped" in log
    assert log.count("stopped sink ") == len(SINKS), log[-3000:]
    assert port_is_free(port)


async def test_a_metrics_port_in_use_stops_the_command_with_one_line(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stage = await _sink_command(
            _stage_env(settings, FLEETSTREAM_SINK_METRICS_PORT=str(port))
        )
        _, stderr = await asyncio.wait_for(stage.communicate(), 60)

    lines = stderr.decode().splitlines()
    assert stage.returncode == 2, lines
    # Refused before any sink started: the error is all there is.
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"fleetstream sink: sink metrics: cannot listen on 127.0.0.1:{port}: "
    ), lines
    assert "FLEETSTREAM_SINK_METRICS_PORT" in lines[0]


def test_a_metrics_host_not_on_this_machine_is_a_config_error():
    # 192.0.2.0/24 is reserved for documentation: no host here has it.
    with pytest.raises(ConfigError) as raised:
        bind("192.0.2.1", free_port())
    assert "cannot listen on 192.0.2.1:" in str(raised.value)
    assert raised.value.hint
