"""The derived worker on the real broker: trips and day totals from positions."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from test_derived_traces import truck_positions, utc

from fleetstream.codec import codec
from fleetstream.kafka import ensure_topics, make_producer
from fleetstream.settings import Settings
from fleetstream.topics import CLEAN, STATE
from processors.derived import (
    DerivedConfig,
    DerivedWorker,
    DeviceDerivation,
    epoch_ms,
)

DEGREE_M = math.pi / 180 * 6_371_008.8


async def produce_positions(settings: Settings, positions: list[dict]) -> None:
    """Send Position records keyed by IMEI, in the given order."""
    position = codec("Position")
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic(CLEAN, "position")
        sent = [
            await producer.send(topic, position.encode(p), key=p["imei"].encode())
            for p in positions
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def produce_registry(settings: Settings, imei: str, driver: str, plate: str):
    """Send the Device registry row of one device."""
    device = codec("Device").encode(
        {
            "imei": imei,
            "driver_name": driver,
            "vehicle_number": plate,
            "source": "poll",
            "received_at": 1_700_000_000_000,
        }
    )
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic(CLEAN, "device")
        await producer.send_and_wait(topic, device, key=imei.encode())
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, topic: str
) -> list[tuple[bytes, bytes | None]]:
    """Return every record of a topic, read up to the fetch high watermark."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
        ]
        if not tps:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or ()
            tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records, waiting = [], set(tps)
        while waiting:
            batch = await consumer.getmany(*waiting, timeout_ms=200)
            for tp_records in batch.values():
                records += [(r.key, r.value) for r in tp_records]
            for tp in list(waiting):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    waiting.discard(tp)
        return records
    finally:
        await consumer.stop()


async def outputs(settings: Settings) -> tuple[dict, dict]:
    """Return the latest trip per trip_id and the latest day total per key."""
    trip, mileage = codec("Trip"), codec("MileageDaily")
    trips = {}
    for _, value in await read_topic(settings, settings.topic(CLEAN, "trip")):
        record = as_ms(trip.decode(value))
        trips[record["trip_id"]] = record
    days = {}
    for key, value in await read_topic(
        settings, settings.topic(CLEAN, "mileage_daily")
    ):
        days[key.decode()] = as_ms(mileage.decode(value))
    return trips, days


def as_ms(record: dict) -> dict:
    """Return a decoded record with its timestamps as epoch ms."""
    return {k: epoch_ms(v) if isinstance(v, datetime) else v for k, v in record.items()}


async def wait_for(check, timeout: float = 60.0, every: float = 0.5):
    """Call the async ``check`` until it returns a truthy value; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(every)


class RunningWorker:
    """A DerivedWorker running in this event loop until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.worker = DerivedWorker(settings)
        self.stop = asyncio.Event()
        self.task = None

    async def __aenter__(self) -> DerivedWorker:
        self.task = asyncio.ensure_future(self.worker.run(self.stop))
        await asyncio.wait_for(self.worker.ready.wait(), 30)
        return self.worker

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
def derived_settings(make_settings) -> Settings:
    return make_settings(trip_idle_close_seconds=2.0)


def north(imei: str, t_ms: int, metres: float, speed: float, acc: bool | None):
    return {
        "imei": imei,
        "gps_time": t_ms,
        "lat": -1.3 + metres / DEGREE_M,
        "lng": 36.8,
        "speed_kmh": speed,
        "acc_on": acc,
        "pos_type": "GPS",
        "source": "push",
        "origin": "pushgps",
        "received_at": t_ms,
    }


async def test_worker_derives_truck_b_trip_and_day_from_the_topic(derived_settings):
    settings = derived_settings
    await ensure_topics(settings)
    imei, positions = truck_positions("truck-B")
    await produce_registry(settings, imei, driver="A. Driver", plate="KDA 123X")
    await produce_positions(settings, positions)

    async with RunningWorker(settings) as worker:

        async def done():
            trips, days = await outputs(settings)
            return (trips, days) if trips and days else None

        trips, days = await wait_for(done)
        state = await read_topic(settings, settings.topic(STATE, "derived"))

    assert [(t["start_time"], t["end_time"]) for t in trips.values()] == [
        (utc("2018-05-04 03:55:35"), utc("2018-05-04 05:02:22"))
    ]
    trip = next(iter(trips.values()))
    assert (trip["source"], trip["distance_source"]) == ("derived", "odometer")
    assert (trip["driver_name"], trip["vehicle_number"]) == ("A. Driver", "KDA 123X")
    assert trip["distance_m"] == 25_100.0
    day = days[f"{imei}|2018-05-04"]
    assert (day["distance_source"], day["distance_m"]) == ("odometer", 25_100.0)
    assert day["gps_distance_m"] == pytest.approx(24_200, rel=0.01)
    fix_keys = [k for k, _ in state if b"|" in k]
    unique_times = {p["gps_time"] for p in positions}
    assert len(fix_keys) == len(set(fix_keys)) == len(unique_times)
    assert worker.counts["repeats"] == len(positions) - len(unique_times)


async def test_fix_arriving_days_late_updates_its_day(derived_settings):
    settings = derived_settings
    await ensure_topics(settings)
    imei = "860000000000017"
    day0 = utc("2026-03-02 06:00:00")
    route = [north(imei, day0 + i * 60_000, i * 1_000.0, 60.0, None) for i in range(6)]
    later = [north(imei, day0 + 3 * 86_400_000, 5_000.0, 0.0, None)]
    await produce_positions(settings, route[:2] + route[3:] + later)
    key = f"{imei}|2026-03-02"

    async with RunningWorker(settings):

        async def day_total(expected: float):
            days = (await outputs(settings))[1]
            total = days.get(key, {}).get("gps_distance_m")
            if total is not None and total == pytest.approx(expected, rel=1e-3):
                return days[key]
            return None

        first = await wait_for(lambda: day_total(5_000.0), timeout=30)
        assert first is not None and first["fixes"] == 5
        detour = dict(route[2], lng=36.8 + 1_000 / DEGREE_M)
        await produce_positions(settings, [detour])
        expected = 3_000 + 2 * math.hypot(1_000, 1_000)
        updated = await wait_for(lambda: day_total(expected), timeout=30)

    assert updated is not None, "the late fix did not update its day"
    assert updated["fixes"] == 6
    assert updated["distance_source"] == "gps"
    assert updated["first_fix_time"] == day0


async def test_worker_recovers_its_state_after_a_clean_restart(derived_settings):
    settings = derived_settings
    await ensure_topics(settings)
    imei = "860000000000025"
    t0 = utc("2026-03-02 06:00:00")
    first = [north(imei, t0 + i * 10_000, i * 100.0, 36.0, True) for i in range(30)]
    second = [
        north(imei, t0 + i * 10_000, i * 100.0, 36.0, True) for i in range(30, 60)
    ]
    off = [north(imei, t0 + 600_000, 5_900.0, 0.0, False)]
    await produce_positions(settings, first)
    async with RunningWorker(settings) as worker:
        await wait_for(lambda: _processed(worker, 30), timeout=30)

    await produce_positions(settings, first[::3] + second + off)
    async with RunningWorker(settings) as worker:

        async def closed():
            return (await outputs(settings))[0]

        trips = await wait_for(closed, timeout=30)

    assert worker.counts["repeats"] == 10
    assert [(t["start_time"], t["end_time"]) for t in trips.values()] == [
        (t0, t0 + 600_000)
    ]
    assert next(iter(trips.values()))["distance_m"] == pytest.approx(5_900, rel=0.01)


async def _processed(worker: DerivedWorker, n: int) -> bool:
    return worker.counts["fixes"] >= n


def test_window_forgets_old_days_without_rewriting_their_totals(make_settings):
    settings = make_settings(derived_window_days=1.0)
    config = DerivedConfig.from_settings(settings)
    device = DeviceDerivation("860000000000041", config)
    day0 = utc("2026-03-02 06:00:00")
    for i in range(6):
        device.apply(
            config.fix(north(device.imei, day0 + i * 60_000, i * 1e3, 60, None)), 0
        )
    sent = device.day_record("2026-03-02", 0)["gps_distance_m"]
    three_days = day0 + 3 * 86_400_000
    later = device.apply(config.fix(north(device.imei, three_days, 5e3, 0, None)), 0)
    far = device.apply(
        config.fix(north(device.imei, three_days + 7_200_000, 9e3, 60, None)), 0
    )

    stale = device.apply(
        config.fix(north(device.imei, day0 + 30_000, 500, 60, None)), 0
    )
    just_inside = three_days + 7_200_000 - 86_400_000 + 60_000
    placed = device.apply(config.fix(north(device.imei, just_inside, 7e3, 60, None)), 0)

    assert sent == pytest.approx(5_000, rel=0.001)
    assert later is not None and later.pruned and far is not None
    assert stale is None
    assert "2026-03-02" not in device.ledger.days
    assert placed is not None and all(day > "2026-03-02" for day in placed.days)


def test_late_fix_inside_a_closed_trip_re_sends_it_longer(make_settings):
    settings = make_settings()
    config = DerivedConfig.from_settings(settings)
    device = DeviceDerivation("860000000000058", config)
    t0 = utc("2026-03-02 06:00:00")
    drive = [north(device.imei, t0 + i * 60_000, i * 1e3, 60.0, True) for i in range(8)]
    off = [
        north(device.imei, t0 + 480_000 + i * 60_000, 7e3, 0.0, False) for i in (0, 2)
    ]
    closed = [t for f in drive[:3] + drive[4:] + off for t in _trips(device, config, f)]
    detour = dict(drive[3], lng=36.8 + 1_000 / DEGREE_M)

    again = _trips(device, config, detour)

    assert len(closed) == 1 and len(again) == 1
    assert again[0]["trip_id"] == closed[0]["trip_id"]
    assert closed[0]["gps_distance_m"] == pytest.approx(7_000, rel=0.001)
    grown = 5_000 + 2 * math.hypot(1_000, 1_000)
    assert again[0]["gps_distance_m"] == pytest.approx(grown, rel=0.001)


def _trips(device: DeviceDerivation, config: DerivedConfig, position: dict) -> list:
    changes = device.apply(config.fix(position), 0)
    return changes.trips if changes else []
