"""Facts derived in the stream: distance, trips, daily mileage; exact recovery.

``DerivedWorker`` reads the clean Position topic in consumer group
``<prefix>-derived`` (and the Device topic, for the driver and plate that trips
carry) and, per device, places each new fix on its path
(``processors.distance``), updates its local days (``processors.mileage``) and
steps its trip machine (``processors.trips``). It sends closed trips to the
clean trip topic (``source`` derived) and the changed day totals, keyed
``<imei>|<day>``, to the compacted daily mileage topic. ``register`` runs it as
a service of the processing stage's faust app.

State and recovery
------------------
faust tables recover by reading each changelog up to ``end_offsets``. The
embedded broker answers that with the base offset of the last batch plus one,
so recovery stops short and silently loses the last changelog batch. Producing
every record alone (``producer_max_batch_size=1``) makes the answer right but
cuts the producer from about 64k to 3k records a second for every topic of the
app. This module therefore keeps its state in its own compacted topic
(``<prefix>.state.derived``) and, on partition assignment, reads it up to the
high watermark carried by the fetch responses (``consumer.highwater``), which
both the embedded broker and Kafka report correctly. Batching is untouched.

Measured with ``bench/bench_derived.py`` on the embedded broker (2 shared
cores, 200 devices, 40,000 fixes): 19-29k fixes/s with batched produce against
1.3-2.6k fixes/s when every record is produced alone (8-23x); about 175 bytes
of state written per fix; recovery of all 200 devices in 2.1 s. Recovery reads
every fix still in the window, so its time grows with devices x fix rate x
``derived_window_days`` (about 20k fixes/s here).

The state topic has as many partitions as the Position topic; the state of a
device read from Position partition ``p`` is written to state partition ``p``.
It holds two kinds of record:

* ``<imei>|<gps_time>`` -> one accepted fix (a tombstone once it leaves the
  window of ``derived_window_days``);
* ``<imei>`` -> a head: the trip machine, the days, the recent trips.

Within a batch a device's fixes are written before its head, on one partition,
so whatever a crash leaves on the topic is a prefix of what was sent. Recovery
builds each device's path from the fixes before its last head, restores the
head, then applies the fixes written after it exactly as live processing did.

Delivery is at-least-once. Input offsets are committed only after the batch's
outputs and state are acknowledged. After a crash the uncommitted fixes are
delivered again and recognised by their ``(imei, gps_time)``, so nothing is
counted twice. Outputs sent just before a crash may be missing while the state
already holds them, so after recovery every device re-sends its recent trips
and its day totals; their keys and trip ids make that idempotent downstream.

Silence that closes a trip (``trip_idle_close_seconds``) is measured on this
worker's wall clock from the last fix of the device it processed, and only in
partitions it has read to their high watermark; a restart starts the count
again. A worker stalled for longer than that while its broker keeps accepting
fixes (a rebalance does not last that long) would close trips early.

Live positions are not derived here: the sink upserts
``tracksolid.live_positions`` from the Position topic, forward only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from fleetstream.codec import codec
from fleetstream.errors import ContractError
from fleetstream.kafka import ensure_topics, make_consumer, make_producer
from fleetstream.runtime import run_until_stopped
from fleetstream.settings import Settings
from fleetstream.topics import CLEAN, STATE
from processors.collector import collector
from processors.distance import Fix, JitterRules, Track
from processors.mileage import DayLedger
from processors.trips import Span, TripMachine, TripRules, summarise

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HEAD_VERSION = 1
EXPIRE_EVERY_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def epoch_ms(value: datetime | int) -> int:
    """Return epoch ms of a decoded Avro timestamp-millis (datetime or int)."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    return value


@dataclass(frozen=True)
class DerivedConfig:
    """Everything a device derivation needs from the settings."""

    zone: ZoneInfo
    window_ms: int
    counted_types: frozenset[str]
    jitter: JitterRules
    trips: TripRules

    @classmethod
    def from_settings(cls, settings: Settings) -> DerivedConfig:
        types = {t.strip().upper() for t in settings.distance_pos_types.split(",")}
        return cls(
            ZoneInfo(settings.fleet_timezone),
            int(settings.derived_window_days * DAY_MS),
            frozenset(t for t in types if t),
            JitterRules.from_settings(settings),
            TripRules.from_settings(settings),
        )

    def fix(self, position: dict) -> Fix:
        """Return the Fix of a decoded Position record."""
        return Fix(
            epoch_ms(position["gps_time"]),
            position["lat"],
            position["lng"],
            position.get("speed_kmh"),
            position.get("acc_on"),
            position.get("odometer_m"),
            position.get("pos_type", "UNKNOWN") in self.counted_types,
        )


@dataclass
class Changes:
    """What one fix or one expiry changed for a device."""

    trips: list[dict] = field(default_factory=list)
    days: set[str] = field(default_factory=set)
    pruned: list[int] = field(default_factory=list)


class DeviceDerivation:
    """Path, days, trip machine and recent trips of one device."""

    def __init__(self, imei: str, config: DerivedConfig) -> None:
        self.imei = imei
        self.config = config
        self.track = Track(config.jitter)
        self.ledger = DayLedger(config.zone)
        self.machine = TripMachine(config.trips)
        self.recent: list[Span] = []
        self.latest: int | None = None
        self.pruned_through = 0
        self.last_seen_wall = 0
        self.device: dict = {}

    def apply(self, fix: Fix, wall_ms: int) -> Changes | None:
        """Take one fix; return what changed, or None for a repeat or a stale fix.

        A fix older than the window behind the newest one is stale: its days
        were final long ago and its neighbours may be forgotten. The clean
        stage drops fixes dated in the future, so the newest cannot run ahead.
        """
        if self.latest is not None and fix.t < self.latest - self.config.window_ms:
            return None
        placement = self.track.add(fix)
        if placement is None:
            return None
        changes = Changes(days=self.ledger.record(fix, placement))
        if self.machine.clock is None or fix.t > self.machine.clock:
            for span in self.machine.step(fix):
                self._closed(span, wall_ms, changes)
        else:
            for span in self.recent:
                if span.covers(fix.t):
                    self._summary(span, wall_ms, changes)
        self.latest = fix.t if self.latest is None else max(self.latest, fix.t)
        self.last_seen_wall = wall_ms
        changes.pruned = self._prune()
        return changes

    def expire(self, wall_ms: int) -> Changes | None:
        """Close a trip whose candidate end was followed by silence."""
        silent_s = (wall_ms - self.last_seen_wall) / 1000
        spans = self.machine.expire(silent_s)
        if not spans:
            return None
        changes = Changes()
        for span in spans:
            self._closed(span, wall_ms, changes)
        return changes

    def _closed(self, span: Span, wall_ms: int, changes: Changes) -> None:
        self.recent.append(span)
        self._summary(span, wall_ms, changes)

    def _summary(self, span: Span, wall_ms: int, changes: Changes) -> None:
        trip = summarise(
            self.imei, span, self.track, self.config.trips, wall_ms, self.device
        )
        if trip is not None:
            changes.trips.append(trip)

    def _prune(self) -> list[int]:
        cutoff = self.latest - self.config.window_ms
        # Pruning an hour at a time keeps it off the per-fix path. When it runs
        # depends on the fixes only, so a restarted worker prunes alike.
        if cutoff < self.pruned_through + 3_600_000:
            return []
        self.pruned_through = cutoff
        self.ledger.prune(cutoff - DAY_MS)
        self.recent = [s for s in self.recent if s.end.t >= cutoff]
        return self.track.prune(cutoff)

    def trips(self, wall_ms: int) -> list[dict]:
        """Return the current version of every recent trip."""
        changes = Changes()
        for span in self.recent:
            self._summary(span, wall_ms, changes)
        return changes.trips

    def day_record(self, day: str, wall_ms: int) -> dict:
        """Return the MileageDaily record of one day."""
        figures = self.ledger.days[day]
        distance, source = figures.figure(self.config.jitter.max_plausible_kmh)
        return {
            "imei": self.imei,
            "day": day,
            "timezone": self.config.zone.key,
            "distance_m": max(0.0, distance),
            "distance_source": source,
            "gps_distance_m": max(0.0, figures.gps_m),
            "odometer_distance_m": figures.odometer_figure(
                self.config.jitter.max_plausible_kmh
            ),
            "fixes": figures.fixes,
            "first_fix_time": figures.first_ms,
            "last_fix_time": figures.last_ms,
            "computed_at": wall_ms,
        }

    def head(self) -> dict:
        """Return the snapshot written after the device's fixes of a batch."""
        return {
            "v": HEAD_VERSION,
            "machine": self.machine.to_state(),
            "days": self.ledger.to_state(),
            "recent": [span.as_list() for span in self.recent],
            "latest": self.latest,
            "pruned_through": self.pruned_through,
            "last_seen_wall": self.last_seen_wall,
            "device": self.device,
        }

    def restore(self, head: dict, fixes: Iterable[Fix]) -> None:
        """Restore a head and the path of the fixes written before it."""
        if head.get("v") != HEAD_VERSION:
            raise ContractError(
                f"derived state of {self.imei} has version {head.get('v')!r}, "
                f"expected {HEAD_VERSION}",
                hint="a newer release wrote it; run that release or reset the group",
            )
        self.track.load(sorted(fixes, key=lambda fix: fix.t))
        self.machine = TripMachine.from_state(self.config.trips, head["machine"])
        self.ledger = DayLedger.from_state(self.config.zone, head["days"])
        self.recent = [Span.from_list(values) for values in head["recent"]]
        self.latest = head["latest"]
        self.pruned_through = head["pruned_through"]
        self.last_seen_wall = head["last_seen_wall"]
        self.device = head["device"]


class StateLog:
    """Encoding of the state topic's keys and values."""

    def __init__(self) -> None:
        self.codec = codec("DerivedState")

    def fix(self, imei: str, fix: Fix) -> tuple[bytes, bytes]:
        body = json.dumps(fix.as_list())
        key = f"{imei}|{fix.t}".encode()
        return key, self.codec.encode({"imei": imei, "kind": "fix", "body": body})

    def head(self, device: DeviceDerivation) -> tuple[bytes, bytes]:
        body = json.dumps(device.head(), separators=(",", ":"))
        value = {"imei": device.imei, "kind": "head", "body": body}
        return device.imei.encode(), self.codec.encode(value)

    @staticmethod
    def tombstone(imei: str, t: int) -> bytes:
        return f"{imei}|{t}".encode()


class PartitionLoader:
    """Rebuild the devices of some partitions from the state topic."""

    def __init__(self, worker: DerivedWorker) -> None:
        self.worker = worker
        self.heads: dict[str, dict] = {}
        self.before: dict[str, dict[int, Fix]] = {}
        self.after: dict[str, dict[int, Fix]] = {}

    def take(self, key: bytes, value: bytes | None) -> None:
        imei, _, t = key.decode().partition("|")
        if value is None:
            self.before.get(imei, {}).pop(int(t), None)
            self.after.get(imei, {}).pop(int(t), None)
            return
        record = self.worker.state.codec.decode(value)
        if record["kind"] == "head":
            self.heads[imei] = json.loads(record["body"])
            self.before.setdefault(imei, {}).update(self.after.pop(imei, {}))
        else:
            fix = Fix.from_list(json.loads(record["body"]))
            self.after.setdefault(imei, {})[fix.t] = fix

    @property
    def unsnapshotted(self) -> int:
        """Return how many fixes were written after their device's last head."""
        return sum(len(fixes) for fixes in self.after.values())

    @classmethod
    async def read(
        cls, worker: DerivedWorker, tps: list[TopicPartition]
    ) -> dict[int, PartitionLoader]:
        """Read partitions from their start to the fetch high watermark."""
        settings = worker.settings
        loaders = {tp.partition: cls(worker) for tp in tps}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_tuning()["fetch_max_wait_ms"],
            request_timeout_ms=settings.kafka_request_timeout_ms,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            waiting = set(tps)
            while waiting:
                batch = await consumer.getmany(*waiting, timeout_ms=50)
                for tp, records in batch.items():
                    for record in records:
                        loaders[tp.partition].take(record.key, record.value)
                for tp in list(waiting):
                    # The fetch response's high watermark, not end_offsets():
                    # the embedded broker reports the latter short.
                    highwater = consumer.highwater(tp)
                    if (
                        highwater is not None
                        and await consumer.position(tp) >= highwater
                    ):
                        waiting.discard(tp)
        finally:
            await consumer.stop()
        return loaders

    def devices(self, wall_ms: int, batch: Batch) -> dict[str, DeviceDerivation]:
        """Return the rebuilt devices; fixes written after a head go to ``batch``."""
        devices = {}
        config = self.worker.config
        for imei in self.heads.keys() | self.after.keys():
            device = DeviceDerivation(imei, config)
            head = self.heads.get(imei)
            if head is not None:
                device.restore(head, self.before.get(imei, {}).values())
            for fix in self.after.get(imei, {}).values():
                batch.apply(device, fix, wall_ms, log_fix=False)
            # Silence is measured from when this worker could hear the device
            # again, not across the time no worker was running.
            device.last_seen_wall = wall_ms
            batch.resend(device, wall_ms)
            devices[imei] = device
        return devices


class Batch:
    """Messages produced by one batch of input, in the order they must be sent."""

    def __init__(self, worker: DerivedWorker, partition: int) -> None:
        self.worker = worker
        self.partition = partition
        self.state: list[tuple[bytes, bytes | None]] = []
        self.trips: list[tuple[bytes, dict]] = []
        self.days: dict[tuple[str, str], DeviceDerivation] = {}
        self.heads: dict[str, DeviceDerivation] = {}

    def apply(
        self, device: DeviceDerivation, fix: Fix, wall_ms: int, log_fix: bool = True
    ) -> bool:
        """Apply one fix; return False when it changed nothing."""
        changes = device.apply(fix, wall_ms)
        if changes is None:
            return False
        if log_fix:
            self.state.append(self.worker.state.fix(device.imei, fix))
        self.record(device, changes)
        return True

    def record(self, device: DeviceDerivation, changes: Changes) -> None:
        for t in changes.pruned:
            self.state.append((StateLog.tombstone(device.imei, t), None))
        for trip in changes.trips:
            self.trips.append((device.imei.encode(), trip))
        for day in changes.days:
            self.days[(device.imei, day)] = device
        self.heads[device.imei] = device

    def resend(self, device: DeviceDerivation, wall_ms: int) -> None:
        """Queue the device's recent trips and days again (after recovery)."""
        for trip in device.trips(wall_ms):
            self.trips.append((device.imei.encode(), trip))
        for day in device.ledger.days:
            self.days[(device.imei, day)] = device
        self.heads[device.imei] = device

    def __bool__(self) -> bool:
        return bool(self.state or self.trips or self.days or self.heads)


class DerivedWorker(ConsumerRebalanceListener):
    """Consume clean positions and keep the derived facts; see the module doc."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = DerivedConfig.from_settings(settings)
        self.state = StateLog()
        self.position_topic = settings.topic(CLEAN, "position")
        self.state_topic = settings.topic(STATE, "derived")
        self.trip_topic = settings.topic(CLEAN, "trip")
        self.mileage_topic = settings.topic(CLEAN, "mileage_daily")
        self.group_id = f"{settings.topic_prefix}-derived"
        self.partitions: dict[int, dict[str, DeviceDerivation]] = {}
        self.device_topic = settings.topic(CLEAN, "device")
        self.positions = codec("Position")
        self.devices = codec("Device")
        self.trip_codec = codec("Trip")
        self.mileage_codec = codec("MileageDaily")
        self.counts = {"fixes": 0, "repeats": 0, "trips": 0, "days": 0, "bad": 0}
        self.ready = asyncio.Event()
        self.recovery_seconds = 0.0
        self._lock = asyncio.Lock()
        self._failure: Exception | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer = None

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; flush and commit before returning."""
        with collector.running():
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.settings)
        self._producer = make_producer(self.settings)
        # The range assignor gives one member the same partition numbers of
        # both topics, so a device's registry row meets its positions' state.
        self._consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            max_poll_records=self.settings.process_batch_max_records,
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        topics = [self.position_topic, self.device_topic]
        self._consumer.subscribe(topics, listener=self)
        await self._producer.start()
        await self._consumer.start()
        logger.info("derived worker started in group %s", self.group_id)
        last_expiry = 0.0
        try:
            while not stop.is_set():
                if self._failure is not None:
                    raise self._failure
                batch = await self._consumer.getmany(timeout_ms=200)
                if batch:
                    await self._process(batch)
                if time.monotonic() - last_expiry >= EXPIRE_EVERY_S:
                    last_expiry = time.monotonic()
                    await self._expire()
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            logger.info(
                "derived worker stopped: %d fixes, %d repeats, %d trips, %d days",
                self.counts["fixes"],
                self.counts["repeats"],
                self.counts["trips"],
                self.counts["days"],
            )

    async def _process(self, batch: dict) -> None:
        wall = now_ms()
        offsets = {}
        async with self._lock:
            batches = []
            for tp, records in batch.items():
                devices = self.partitions.get(tp.partition)
                if devices is None:
                    continue
                out = Batch(self, tp.partition)
                for record in records:
                    self._take(out, devices, record, wall)
                batches.append(out)
                offsets[tp] = records[-1].offset + 1
            await self._send(batches)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            logger.warning(
                "offsets of %d partitions not committed (%s); they will be "
                "delivered again and recognised as repeats",
                len(offsets),
                type(exc).__name__,
            )

    def _take(self, out: Batch, devices: dict, record, wall: int) -> None:
        if record.topic == self.device_topic:
            self._registry(out, devices, record)
            return
        try:
            position = self.positions.decode(record.value)
            imei = position["imei"]
            fix = self.config.fix(position)
        except (ContractError, KeyError, TypeError, ValueError):
            self.counts["bad"] += 1
            logger.warning(
                "skipped an unreadable position at %s[%d]@%d",
                record.topic,
                record.partition,
                record.offset,
            )
            return
        device = devices.get(imei)
        if device is None:
            device = devices[imei] = DeviceDerivation(imei, self.config)
        if out.apply(device, fix, wall):
            self.counts["fixes"] += 1
        else:
            self.counts["repeats"] += 1

    def _registry(self, out: Batch, devices: dict, record) -> None:
        """Remember the driver and plate that later trips of a device carry."""
        try:
            registry = self.devices.decode(record.value)
        except ContractError:
            self.counts["bad"] += 1
            logger.warning(
                "skipped an unreadable device at %s[%d]@%d",
                record.topic,
                record.partition,
                record.offset,
            )
            return
        imei = registry["imei"]
        known = {k: registry.get(k) for k in ("driver_name", "vehicle_number")}
        device = devices.get(imei)
        if device is None:
            device = devices[imei] = DeviceDerivation(imei, self.config)
        if device.device != known:
            device.device = known
            out.heads[imei] = device

    async def _expire(self) -> None:
        """Close trips of silent devices in partitions this worker is level with.

        A partition with records still to read is not silence: its devices
        may have spoken, so their trips stay open until the worker catches up.
        """
        wall = now_ms()
        async with self._lock:
            batches = []
            for partition, devices in self.partitions.items():
                if not await self._caught_up(partition):
                    continue
                out = Batch(self, partition)
                for device in devices.values():
                    changes = device.expire(wall)
                    if changes is not None:
                        out.record(device, changes)
                if out:
                    batches.append(out)
            await self._send(batches)

    async def _caught_up(self, partition: int) -> bool:
        tp = TopicPartition(self.position_topic, partition)
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            return False
        try:
            return await self._consumer.position(tp) >= highwater
        except IllegalStateError:
            return False

    async def _send(self, batches: list[Batch]) -> None:
        """Send every message of the batches and wait for all acknowledgements."""
        producer = self._producer
        pending = []
        wall = now_ms()
        for out in batches:
            p = out.partition
            for key, trip in out.trips:
                value = self.trip_codec.encode(trip)
                pending.append(await producer.send(self.trip_topic, value, key=key))
            for (imei, day), device in out.days.items():
                if day not in device.ledger.days:
                    # Forgotten later in the same batch: its last total stands.
                    continue
                value = self.mileage_codec.encode(device.day_record(day, wall))
                key = f"{imei}|{day}".encode()
                pending.append(await producer.send(self.mileage_topic, value, key=key))
            for key, value in out.state:
                sent = await producer.send(
                    self.state_topic, value, key=key, partition=p
                )
                pending.append(sent)
            for device in out.heads.values():
                key, value = self.state.head(device)
                sent = await producer.send(
                    self.state_topic, value, key=key, partition=p
                )
                pending.append(sent)
            self.counts["trips"] += len(out.trips)
            self.counts["days"] += len(out.days)
        if pending:
            await asyncio.gather(*pending)

    async def on_partitions_revoked(self, revoked) -> None:
        async with self._lock:
            for tp in revoked:
                self.partitions.pop(tp.partition, None)
        if revoked:
            logger.info("derived state of %d partitions released", len(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        wanted = sorted({tp.partition for tp in assigned})
        try:
            async with self._lock:
                fresh = [p for p in wanted if p not in self.partitions]
                if fresh:
                    await self._recover(fresh)
        except Exception as exc:
            # aiokafka only logs a failing listener; without its state a
            # partition would be skipped for good, so the worker must stop.
            self._failure = exc
            raise
        self.ready.set()

    async def _recover(self, partitions: list[int]) -> None:
        started = time.monotonic()
        wall = now_ms()
        tps = [TopicPartition(self.state_topic, p) for p in partitions]
        loaders = await PartitionLoader.read(self, tps)
        batches = []
        for partition, loader in loaders.items():
            out = Batch(self, partition)
            self.partitions[partition] = loader.devices(wall, out)
            batches.append(out)
        await self._send(batches)
        self.recovery_seconds = time.monotonic() - started
        logger.info(
            "derived state of %d devices in %d partitions recovered in %.2f s; "
            "%d fixes written after the last snapshot applied again",
            sum(len(self.partitions[p]) for p in loaders),
            len(partitions),
            self.recovery_seconds,
            sum(loader.unsnapshotted for loader in loaders.values()),
        )


def register(app, settings: Settings) -> None:
    """Run a ``DerivedWorker`` as a service of the processing stage's faust app."""
    from mode import Service

    class DerivedService(Service):
        """The derived worker, started and stopped with the faust app."""

        async def on_start(self) -> None:
            self._stop = asyncio.Event()
            self._running = self.add_future(self._run())

        async def _run(self) -> None:
            try:
                await DerivedWorker(settings).run(self._stop)
            except Exception as exc:
                logger.exception("derived worker failed; stopping the stage")
                await self.crash(exc)

        async def on_stop(self) -> None:
            self._stop.set()
            await asyncio.wait({self._running}, timeout=30)

    app.service(DerivedService)


def main(settings: Settings) -> None:
    """Run the derived worker alone until SIGTERM or SIGINT."""
    run_until_stopped(lambda stop: DerivedWorker(settings).run(stop))
