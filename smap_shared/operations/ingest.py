"""HTTP ingest: `POST /api/smap/telemetry` takes a batch of frames in the `smap-telemetry` message format from
any HTTP client (a ground segment's own tools) and writes them to the telemetry topic, as the simulator does.

    {"frames": [{"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "...", "index": 0,
                 "sensors": {"sensor_0": 0.12, ...}}, ...]}          (a bare JSON array works too)

Each frame is checked by the trigger's own function (`validate_telemetry`, on the frame's bytes, with the same
fleet, sensor widths and plausibility gate), so a frame is accepted here exactly when the trigger would accept
it; the trigger checks it again when it reads the topic. Rejected frames are dead-lettered (the telemetry DLQ,
`source_topic` "http", `offset` the frame's position in the batch) and answered with their reason.

Guarantee, per answer: 200 -- every frame is in the topic (acks=all); 422 -- the accepted ones are in the
topic and every rejected one is in the DLQ, the body says which is which; 503 -- the broker did not confirm:
resend the batch. Resending is always safe: the model applies a stream's frame index once, so a frame that
did land before the failure is recognised as a duplicate. Frames of one stream keep their order in the batch
(one key, one partition, sent in order by one producer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from smap_shared.fleet import Fleet
from smap_shared.streaming.kafka import start_producer
from smap_shared.streaming.validation import Invalid, SaneRange, dead_letter, parse_json, validate_telemetry

log = logging.getLogger(__name__)

SERVICE = "smap-operation-server"
SOURCE = "http"  # the dead letters' source_topic
MAX_INGEST_BYTES = 8 * 1024 * 1024  # a request body; 2,000 SMAP frames take about 4 MiB
MAX_INGEST_FRAMES = 5000
SEND_TIMEOUT_S = 15.0

_encode = msgspec.json.Encoder()


@dataclass(frozen=True)
class FrameCheck:
    position: int  # in the batch
    raw: bytes  # the frame as it goes to the topic
    stream_id: str | None  # when the frame names one
    problem: Invalid | None  # None: accepted

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"position": self.position, "stream_id": self.stream_id,
                               "status": "accepted" if self.problem is None else "rejected"}
        if self.problem is not None:
            out["reason"] = self.problem.reason
        return out


class BatchError(ValueError):
    """The request is not a batch of frames at all (400); nothing was written."""


def check_batch(body: bytes, fleet: Fleet, widths: Mapping[str, int],
                ranges: Mapping[str, SaneRange] | None) -> list[FrameCheck]:
    """Every frame of a request body, checked as the trigger checks a record.

    >>> from smap_shared.fleet import default_fleet
    >>> frame = {"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-12-01T00:00:00Z", "index": 0,
    ...          "sensors": {f"sensor_{i}": 0.0 for i in range(25)}}
    >>> checks = check_batch(msgspec.json.encode([frame, {**frame, "entity": "Z-9"}]), default_fleet(),
    ...                      {"A-1": 25}, None)
    >>> [(c.stream_id, c.problem is None) for c in checks]
    [('SAT-001/A-1', True), ('SAT-001/Z-9', False)]
    >>> checks[1].problem.kind
    'unknown_stream'
    """
    parsed = parse_json(body)
    if isinstance(parsed, Invalid):
        raise BatchError(f"body is not strict JSON ({parsed.reason})")
    frames = parsed.get("frames") if isinstance(parsed, dict) and set(parsed) == {"frames"} else parsed
    if not isinstance(frames, list):
        raise BatchError('body must be {"frames": [frame, ...]} or a JSON array of frames')
    if not frames:
        raise BatchError("the batch has no frames")
    if len(frames) > MAX_INGEST_FRAMES:
        raise BatchError(f"{len(frames)} frames; a request carries at most {MAX_INGEST_FRAMES}")
    out = []
    for position, frame in enumerate(frames):
        raw = _encode.encode(frame)
        checked = validate_telemetry(raw, fleet, widths, ranges)
        sid = None
        if isinstance(frame, dict) and isinstance(frame.get("satellite_id"), str) and \
                isinstance(frame.get("entity"), str):
            sid = f"{frame['satellite_id']}/{frame['entity']}"[:200]
        out.append(FrameCheck(position, raw, sid, checked if isinstance(checked, Invalid) else None))
    return out


class BrokerUnavailableError(RuntimeError):
    """The broker could not be reached or did not confirm: resend the batch."""


class TelemetryWriter:
    """The accepted frames to the telemetry topic and the rejected ones to its DLQ, confirmed (acks=all)
    before the answer. The producer starts on the first batch, so the server starts without the broker."""

    def __init__(self, bootstrap_servers: str, topic: str, dlq_topic: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def _producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self.producer is None:
                try:
                    self.producer = await asyncio.wait_for(
                        start_producer(self.bootstrap_servers, client_id=SERVICE), SEND_TIMEOUT_S)
                except Exception as exc:
                    raise BrokerUnavailableError(f"telemetry broker unavailable: {exc!r}") from exc
            return self.producer

    async def write(self, checks: list[FrameCheck]) -> None:
        producer = await self._producer()
        try:
            futures = []
            for c in checks:
                key = None if c.stream_id is None else c.stream_id.encode()
                if c.problem is None:
                    futures.append(await producer.send(self.topic, value=c.raw, key=key))
                else:
                    letter = dead_letter(c.problem, raw=c.raw, topic=SOURCE, partition=-1, offset=c.position,
                                         key=c.stream_id, service=SERVICE)
                    futures.append(await producer.send(self.dlq_topic, value=letter.model_dump_json().encode(),
                                                       key=key))
            await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_S)
        except Exception as exc:
            log.warning("writing %d ingested frames failed: %r", len(checks), exc)
            raise BrokerUnavailableError(f"the telemetry broker did not confirm the batch: {exc!r}") from exc

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
