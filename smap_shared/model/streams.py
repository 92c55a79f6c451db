"""Per-stream model state with exactly-once application of each step.

The model is stateful, and delivery upstream is at-least-once, so the model itself decides what a request
means from its `sequence_index`:
- newer than the last applied index: apply the step (a jump forward is a gap: counted, still applied);
- not newer and still in the recent history: a redelivery; answer with the outputs recorded the first time
  and leave the state alone;
- older than the history remembers: the source started the stream over (a simulator restart or a new lap
  of a replay): the stream restarts from the initial state at that index, as the offline model would.

State is written through to a store (Redis in production) before it becomes visible in memory, so a crash
between the two can only lose a step that was never answered, and a restart resumes every stream where it
stopped.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from smap_shared.model.scorer import Scorer, StepOutput

Array = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

DEFAULT_STREAM = "__default__"


@dataclass
class StreamState:
    hidden: Array
    last_index: int | None = None
    steps: int = 0
    gaps: int = 0  # total indices skipped over the stream's life
    resets: int = 0  # times the source started the stream over
    history: OrderedDict[int, StepOutput] = field(default_factory=OrderedDict)


@dataclass(frozen=True)
class StepResult:
    output: StepOutput
    duplicate: bool
    gap: int  # indices skipped right before this step (0 when contiguous)


class StateStore(Protocol):
    def load_all(self) -> dict[str, StreamState]: ...

    def save(self, stream_id: str, state: StreamState, index: int | None, output: StepOutput) -> None: ...


class NullStore:
    def load_all(self) -> dict[str, StreamState]:
        return {}

    def save(self, stream_id: str, state: StreamState, index: int | None, output: StepOutput) -> None:
        return None


def encode_output(index: int, out: StepOutput) -> str:
    return json.dumps({
        "i": index, "r": out.reconstruction.tolist(), "e": out.sensor_error.tolist(),
        "s": out.anomaly_score, "d": out.anomaly_detected, "t": out.threshold,
        "g": out.detector_signal, "c": out.alarm_cause,
    })


def decode_output(text: str | bytes) -> tuple[int, StepOutput]:
    d = json.loads(text)
    out = StepOutput(
        reconstruction=np.asarray(d["r"], dtype=np.float64), sensor_error=np.asarray(d["e"], dtype=np.float64),
        anomaly_score=float(d["s"]), anomaly_detected=bool(d["d"]), threshold=float(d["t"]),
        detector_signal=float(d.get("g", "nan")),  # absent in history written before the output existed
        alarm_cause=int(d.get("c", 0)),
    )
    return int(d["i"]), out


class StreamRegistry:
    """All streams of one model. Not thread-safe: one Triton instance owns one model's streams."""

    def __init__(self, scorer: Scorer, store: StateStore | None = None, history: int = 256) -> None:
        self.scorer = scorer
        self.store: StateStore = store or NullStore()
        self.history = history
        self.streams: dict[str, StreamState] = self.store.load_all()
        # a state saved by another model version (a different decision rule's memory) would be misread:
        # those streams start over
        expected = scorer.initial_state().shape
        for sid in [s for s, st in self.streams.items() if st.hidden.shape != expected]:
            log.warning("stream %s: stored state has shape %s, this model's is %s: starting it over",
                        sid, self.streams[sid].hidden.shape, expected)
            del self.streams[sid]
        if self.streams:
            log.info("restored %d stream states", len(self.streams))

    def state(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            st = StreamState(hidden=self.scorer.initial_state())
        return st

    def step(self, x: Array, stream_id: str | None = None, index: int | None = None) -> StepResult:
        sid = stream_id or DEFAULT_STREAM
        st = self.state(sid)
        if index is not None and st.last_index is not None and index <= st.last_index:
            cached = st.history.get(index)
            if cached is not None:
                return StepResult(cached, duplicate=True, gap=0)
            log.warning("stream %s restarts at index %d (last applied %d, beyond the %d-step history)",
                        sid, index, st.last_index, len(st.history))
            st = StreamState(hidden=self.scorer.initial_state(), gaps=st.gaps, resets=st.resets + 1)
        out, hidden = self.scorer.step(x, st.hidden)
        gap = 0 if index is None or st.last_index is None else index - st.last_index - 1
        history = OrderedDict(st.history)
        if index is not None:
            history[index] = out
            while len(history) > self.history:
                history.popitem(last=False)
        new = StreamState(
            hidden=hidden, last_index=index if index is not None else st.last_index,
            steps=st.steps + 1, gaps=st.gaps + gap, resets=st.resets, history=history,
        )
        # Write through first: if the store fails, nothing changed and the caller's retry recomputes.
        self.store.save(sid, new, index, out)
        self.streams[sid] = new
        if gap:
            log.warning("stream %s: gap of %d indices before %s", sid, gap, index)
        return StepResult(out, duplicate=False, gap=gap)


class RedisStateStore:
    """One Redis hash per stream (hidden state, counters) and a capped list of recent outputs."""

    def __init__(self, url: str, model: str, history: int = 256) -> None:
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = f"smap:state:{model}:"
        self.history = history

    def _keys(self, stream_id: str) -> tuple[str, str]:
        return self.prefix + stream_id, self.prefix + stream_id + ":hist"

    def save(self, stream_id: str, state: StreamState, index: int | None, output: StepOutput) -> None:
        key, hist = self._keys(stream_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "hidden": state.hidden.astype("<f8").tobytes(),
            "shape": json.dumps(list(state.hidden.shape)),
            "last_index": "" if state.last_index is None else str(state.last_index),
            "steps": state.steps, "gaps": state.gaps, "resets": state.resets,
        })
        if index is not None:
            pipe.rpush(hist, encode_output(index, output))
            pipe.ltrim(hist, -self.history, -1)
        pipe.execute()

    def load_all(self) -> dict[str, StreamState]:
        out: dict[str, StreamState] = {}
        for raw_key in self.r.scan_iter(match=self.prefix + "*", count=500):
            key = raw_key.decode()
            if key.endswith(":hist"):
                continue
            sid = key[len(self.prefix):]
            h: dict[bytes, bytes] = self.r.hgetall(key)  # type: ignore[assignment]
            shape = tuple(json.loads(h[b"shape"]))
            hidden = np.frombuffer(h[b"hidden"], dtype="<f8").reshape(shape).astype(np.float64)
            last = h[b"last_index"].decode()
            history: OrderedDict[int, StepOutput] = OrderedDict()
            for item in self.r.lrange(key + ":hist", 0, -1):
                i, o = decode_output(item)
                history[i] = o
            out[sid] = StreamState(
                hidden=hidden, last_index=int(last) if last else None,
                steps=int(h[b"steps"]), gaps=int(h[b"gaps"]), resets=int(h.get(b"resets", 0)),
                history=history,
            )
        return out

    def clear(self) -> None:
        for key in self.r.scan_iter(match=self.prefix + "*", count=500):
            self.r.delete(key)
