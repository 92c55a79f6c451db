"""smap-simulator: replays each fleet entity's SMAP test split, row by row, to the telemetry topic.

Each tick emits one frame of every active stream. With SIMULATOR_PHASE=spread (the default) each satellite
emits at its own phase of the interval (satellite k of N at k/N of it: spacecraft are not synchronised), with
"together" (and at interval 0) every stream at the start of the tick. Each emission waits for Kafka's acks of
its frames before the next one (this bounds the frames in flight, also at interval 0).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from smap_shared.data import DataSource, default_source
from smap_shared.fleet import Fleet, FleetError, load_fleet, stream_id
from smap_shared.schemas import TelemetryMessage, sensor_keys, utc_now
from smap_shared.settings import SimulatorSettings
from smap_shared.streaming.kafka import settle, start_producer
from smap_shared.streaming.metrics import simulator_metrics
from smap_shared.streaming.retry import RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S

log = logging.getLogger(__name__)
MIN_TICK_SPACING = timedelta(milliseconds=1)

PROGRESS_EVERY_S = 10.0


class Producer(Protocol):
    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...


@dataclass(frozen=True)
class StreamReplay:
    """One stream's test split (rows x sensors) and its per-row 0/1 anomaly label."""

    satellite_id: str
    entity: str
    test: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]

    @property
    def stream_id(self) -> str:
        return stream_id(self.satellite_id, self.entity)

    @property
    def rows(self) -> int:
        return int(self.test.shape[0])

    def frame(self, index: int, timestamp: datetime, run_id: str | None = None, start: bool = False
              ) -> TelemetryMessage:
        keys = sensor_keys(int(self.test.shape[1]))
        # SMAP labels are per channel (entity), not per sensor: every sensor of the entity carries the
        # channel's 0/1 label of this row.
        label = int(self.labels[index])
        return TelemetryMessage(
            satellite_id=self.satellite_id, entity=self.entity, timestamp=timestamp, index=index,
            sensors=dict(zip(keys, (float(v) for v in self.test[index]), strict=True)),
            ground_truth_labels=dict.fromkeys(keys, label), run_id=run_id, sequence_start=start,
        )


def frame_indices(rows: int, start: int, max_steps: int | None, loop: bool) -> Iterator[int]:
    """Row indices one stream emits: start..rows-1, then (loop) 0..rows-1 again and again; at most
    max_steps of them in all."""

    def laps() -> Iterator[int]:
        yield from range(start, rows)
        while loop and rows > 0:
            yield from range(rows)

    for emitted, index in enumerate(laps()):
        if max_steps is not None and emitted >= max_steps:
            return
        yield index


def select_streams(fleet: Fleet, entities: str) -> list[tuple[str, str]]:
    """(satellite_id, entity) of the fleet, filtered by a comma-separated entity list (empty: all)."""
    streams = fleet.streams()
    wanted = [e.strip() for e in entities.split(",") if e.strip()]
    if not wanted:
        return streams
    known = {e for _, e in streams}
    unknown = [e for e in wanted if e not in known]
    if unknown:
        raise FleetError(f"entity filter names entities outside the fleet: {', '.join(unknown)}")
    return [(sat, e) for sat, e in streams if e in wanted]


def build_replays(settings: SimulatorSettings, fleet: Fleet, source: DataSource) -> list[StreamReplay]:
    replays = []
    for sat, entity in select_streams(fleet, settings.simulator_entities):
        data = source.load(entity)
        replays.append(StreamReplay(sat, entity, data.test, data.test_mask()))
    return replays


@dataclass
class SimulatorStats:
    ticks: int = 0
    frames: int = 0
    last_index: dict[str, int] = field(default_factory=dict)


async def send_tick(
    producer: Producer, topic: str, frames: list[tuple[bytes, bytes]], stop: asyncio.Event
) -> bool:
    """Send (key, value) frames and wait for their acks; frames that failed (Kafka unreachable past the
    producer's own retries) are sent again, with backoff, until acked (True) or `stop` is set (False)."""

    async def send(key: bytes, value: bytes) -> None:
        ack = await producer.send(topic, value=value, key=key)
        await ack

    pending, delay = frames, RETRY_BACKOFF_S
    while True:
        outcomes = await asyncio.gather(*(send(k, v) for k, v in pending), return_exceptions=True)
        failed = [(f, o) for f, o in zip(pending, outcomes, strict=True) if isinstance(o, BaseException)]
        if not failed:
            return True
        log.warning("%d of %d frames not acked (%r); sending them again in %.1f s",
                    len(failed), len(pending), failed[0][1], delay)
        pending = [f for f, _ in failed]
        if await _sleep_or_stop(stop, delay):
            return False
        delay = min(delay * 2, RETRY_BACKOFF_MAX_S)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when `stop` was set meanwhile."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def tick_timestamp(previous: datetime | None) -> datetime:
    """Now, but at least 1 ms after the previous tick: at full speed ticks can come faster than the
    millisecond resolution of VictoriaMetrics, which would merge two frames of a stream into one sample."""
    now = utc_now()
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # whole milliseconds, as VM stores them
    if previous is not None and now < previous + MIN_TICK_SPACING:
        return previous + MIN_TICK_SPACING
    return now


class _Cursor:
    """A stream and the next row index it emits (None: the stream is done), and the run that index belongs
    to: the simulator's run id for the first lap, `<run id>.<lap>` for each later lap of a loop; the first
    frame of each lap starts its run (sequence_start), so the model starts the stream over there on purpose."""

    def __init__(self, replay: StreamReplay, indices: Iterator[int], run_id: str) -> None:
        self.replay = replay
        self._indices = indices
        self._run = run_id
        self.lap = 0
        self.starts = True
        self.next: int | None = next(indices, None)

    @property
    def run_id(self) -> str:
        return self._run if self.lap == 0 else f"{self._run}.{self.lap}"

    def advance(self) -> None:
        previous = self.next
        self.next = next(self._indices, None)
        self.starts = self.next is not None and previous is not None and self.next <= previous
        if self.starts:
            self.lap += 1


def emission_phases(replays: list[StreamReplay], phase: str) -> dict[str, float]:
    """Satellite -> the fraction of the interval at which it emits: k/N for the k-th of N satellites (in
    fleet order) when spread, 0 for all when together.

    >>> r = [StreamReplay(s, "A-1", np.zeros((1, 1)), np.zeros(1, bool)) for s in ("S1", "S1", "S2", "S3", "S4")]
    >>> emission_phases(r, "spread")
    {'S1': 0.0, 'S2': 0.25, 'S3': 0.5, 'S4': 0.75}
    >>> set(emission_phases(r, "together").values())
    {0.0}
    """
    satellites = list(dict.fromkeys(r.satellite_id for r in replays))
    if phase == "together":
        return dict.fromkeys(satellites, 0.0)
    return {sat: k / len(satellites) for k, sat in enumerate(satellites)}


def tick_groups(cursors: list[_Cursor], phases: dict[str, float]) -> list[tuple[float, list[_Cursor]]]:
    """The active streams of one tick grouped by phase, earliest first (each group in fleet order)."""
    groups: dict[float, list[_Cursor]] = {}
    for c in cursors:
        groups.setdefault(phases[c.replay.satellite_id], []).append(c)
    return sorted(groups.items(), key=lambda item: item[0])


async def replay(
    replays: list[StreamReplay], producer: Producer, settings: SimulatorSettings, stop: asyncio.Event
) -> SimulatorStats:
    """Emit the frames of all streams, tick by tick, until every stream is done or `stop` is set."""
    metrics = simulator_metrics()
    run_id = uuid.uuid4().hex[:12]  # a new run each time the simulator starts: the models start every stream over
    log.info("run %s", run_id)
    cursors = []
    for r in replays:
        indices = frame_indices(
            r.rows, settings.simulator_start_index, settings.simulator_max_steps, settings.simulator_loop
        )
        cursor = _Cursor(r, indices, run_id)
        if cursor.next is None:
            log.warning("%s: nothing to send (start index %d, %d test rows)",
                        r.stream_id, settings.simulator_start_index, r.rows)
        else:
            cursors.append(cursor)
    stats = SimulatorStats()
    interval = settings.simulator_interval_s
    phases = emission_phases(replays, settings.simulator_phase if interval > 0 else "together")
    next_tick = last_report = time.monotonic()
    frames_at_report = 0
    last_stamp: dict[float, datetime] = {}  # per phase group: a stream's frames are >= 1 ms apart
    while cursors and not stop.is_set():
        stopped = False
        for offset, group in tick_groups(cursors, phases):
            # each group at its phase of this tick; a group that is late goes at once (no burst after it)
            if offset > 0 and await _sleep_or_stop(stop, next_tick + offset * interval - time.monotonic()):
                stopped = True
                break
            sent_at = time.monotonic()
            stamp = tick_timestamp(last_stamp.get(offset))
            last_stamp[offset] = stamp
            frames = []
            for c in group:
                assert c.next is not None
                # the timestamp is the moment the frame is emitted
                msg = c.replay.frame(c.next, stamp, c.run_id, c.starts)
                # keyed by stream id: a stream stays in one partition, so its frames stay in order
                frames.append((c.replay.stream_id.encode(), msg.model_dump_json().encode()))
            # acks=all: every frame of the group is durable before the next group is emitted
            if not await send_tick(producer, settings.telemetry_topic, frames, stop):
                stopped = True
                break
            metrics.send_latency.observe(time.monotonic() - sent_at)
            for c in group:
                assert c.next is not None
                stats.last_index[c.replay.stream_id] = c.next
                metrics.frames_sent.labels(c.replay.satellite_id, c.replay.entity).inc()
                c.advance()
            stats.frames += len(frames)
        if stopped:
            break
        stats.ticks += 1
        cursors = [c for c in cursors if c.next is not None]
        metrics.active_streams.set(len(cursors))
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S:
            rate = (stats.frames - frames_at_report) / (now - last_report)
            log.info("tick %d: %d frames sent (%.1f frames/s), %d streams active",
                     stats.ticks, stats.frames, rate, len(cursors))
            last_report, frames_at_report = now, stats.frames
        if not cursors:
            break
        # fixed cadence without drift; when a tick ran late, the next one starts at once (no burst)
        next_tick = max(next_tick + interval, now)
        if await _sleep_or_stop(stop, next_tick - time.monotonic()):
            break
    log.info("simulator done: %d ticks, %d frames", stats.ticks, stats.frames)
    return stats


async def run_simulator(
    settings: SimulatorSettings, stop: asyncio.Event, *, fleet: Fleet | None = None,
    source: DataSource | None = None, producer: Producer | None = None,
) -> SimulatorStats:
    """The simulator service: load the streams, replay them to Kafka, close the producer."""
    simulator_metrics()
    fleet = fleet or load_fleet(settings.fleet_file)
    source = source or default_source(settings.smap_data_dir)
    replays = build_replays(settings, fleet, source)
    log.info("replaying %d streams to %s (interval %.3g s, start %d, max steps %s, loop %s)",
             len(replays), settings.telemetry_topic, settings.simulator_interval_s,
             settings.simulator_start_index, settings.simulator_max_steps, settings.simulator_loop)
    if producer is not None:
        return await replay(replays, producer, settings, stop)
    own = await start_producer(settings.kafka_bootstrap_servers, client_id="smap-simulator")
    try:
        return await replay(replays, own, settings, stop)
    finally:
        await settle(own.stop(), "closing the producer")
