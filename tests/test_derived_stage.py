"""The trucks' trips and days through the whole processing stage, raw push to trip.

Each recorded fix becomes the /pushgps record the fake platform sends
(``fakeplatform.pusher.gps_record``), wrapped as a RawEvent received when the
platform received it. The processing stage (cleaning, dedupe, derived facts)
runs on the real broker, and its trip and daily mileage topics must say what a
derivation of the same cleaned fixes in one process says.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from test_derived import outputs, wait_for
from test_derived_real import derive, settings_with, truck_pushes, truck_raw, utc

from fleetstream.codec import codec
from fleetstream.kafka import ensure_topics, make_producer
from processors.app import default_agent_modules, run
from processors.clean import Raw
from processors.derived import DerivedWorker

TRUCKS = {
    # name: (ignition on, ignition off) recorded by the platform
    "truck-A": ("2018-05-03 15:09:57", "2018-05-03 16:53:49"),
    "truck-B": ("2018-05-04 03:55:35", "2018-05-04 05:02:22"),
}


async def produce_raw(settings, records: list[Raw]) -> None:
    """Send /pushgps records as RawEvents in this order."""
    raw = codec("RawEvent")
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic("raw", "position")
        sent = []
        for record in records:
            value = raw.encode(
                {
                    "source": record.source,
                    "origin": record.origin,
                    "received_at": record.received_at,
                    "imei": record.imei,
                    "payload": json.dumps(record.payload),
                    "request_id": None,
                }
            )
            sent.append(await producer.send(topic, value, key=record.imei.encode()))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    "derive_apart", [False, True], ids=["in the process stage", "as its own stage"]
)
async def test_stage_derives_the_trucks_trips_and_days_from_raw_pushes(
    make_settings, derive_apart
):
    settings = make_settings(
        trip_idle_close_seconds=2.0, process_derive=not derive_apart
    )
    await ensure_topics(settings)
    expected_trips, expected_days, events = {}, {}, []
    for name in TRUCKS:
        events += truck_raw(name)[1]
        imei, positions, _ = truck_pushes(name)
        device, trips = derive(settings_with(), imei, positions)
        expected_trips[imei] = [(t["start_time"], t["end_time"]) for t in trips]
        expected_days[imei] = {
            day: device.day_record(day, 0) for day in device.ledger.days
        }
    await produce_raw(settings, events)

    stop = asyncio.Event()
    # Apart, the derived worker runs as `fleetstream derive` runs it, and the
    # processing stage runs none of its own.
    assert ("processors.derived" in default_agent_modules(settings)) != derive_apart
    stages = [run(settings, stop)]
    if derive_apart:
        stages.append(DerivedWorker(settings).run(stop))
    stage = asyncio.gather(*stages)
    try:

        async def done():
            trips, days = await outputs(settings)
            return (trips, days) if len(trips) == 2 and len(days) == 2 else None

        got = await wait_for(done, timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(stage, 60)

    assert got is not None, "the stage derived no trips and days from the pushes"
    trips, days = got
    for name, (ignition_on, ignition_off) in TRUCKS.items():
        imei = truck_pushes(name)[0]
        mine = [t for t in trips.values() if t["imei"] == imei]
        assert [(t["start_time"], t["end_time"]) for t in mine] == expected_trips[imei]
        # Bounded by the ignition the platform recorded, as far as fixes allow.
        assert 0 <= mine[0]["start_time"] - utc(ignition_on) <= 40_000
        assert 0 <= utc(ignition_off) - mine[0]["end_time"] <= 60_000
        for day, expected in expected_days[imei].items():
            record = days[f"{imei}|{day}"]
            assert record["distance_source"] == expected["distance_source"]
            assert record["distance_m"] == pytest.approx(expected["distance_m"])
            assert record["fixes"] == expected["fixes"]
