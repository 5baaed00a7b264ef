"""Commit order of the raw cleaner: never past a batch still in flight."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from processors.batch import InFlight

TP0 = TopicPartition("t.raw.position", 0)
TP1 = TopicPartition("t.raw.position", 1)


async def test_later_batches_wait_for_the_oldest():
    loop = asyncio.get_running_loop()
    in_flight = InFlight()
    first, second, third = (loop.create_future() for _ in range(3))
    in_flight.add(first, {TP0: 100})
    in_flight.add(second, {TP0: 200, TP1: 50})
    in_flight.add(third, {TP1: 80})

    second.set_result(None)
    third.set_result(None)
    assert not in_flight.oldest_done()
    settling = asyncio.ensure_future(in_flight.settle_oldest())
    await asyncio.sleep(0.01)
    assert not settling.done()  # delivered later batches do not jump the queue

    first.set_result(None)
    assert await settling == {TP0: 100}
    assert in_flight.oldest_done()
    assert await in_flight.settle_oldest() == {TP0: 200, TP1: 50}
    assert await in_flight.settle_oldest() == {TP1: 80}
    assert len(in_flight) == 0


async def test_a_failed_batch_blocks_every_later_commit():
    loop = asyncio.get_running_loop()
    in_flight = InFlight()
    failed, delivered = loop.create_future(), loop.create_future()
    in_flight.add(failed, {TP0: 10})
    in_flight.add(delivered, {TP0: 20})
    delivered.set_result(None)
    failed.set_exception(ConnectionError("broker gone"))

    with pytest.raises(ConnectionError):
        await in_flight.settle_oldest()
    in_flight.cancel()
    assert len(in_flight) == 0  # offset 20 is never offered for commit
