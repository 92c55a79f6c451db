"""Per-stream model state with exactly-once application of each step.

The model is stateful, and delivery upstream is at-least-once, so the model itself decides what a request
means from its `sequence_index` and, where the source marks them, its run (`run_id`, `sequence_start`: the
simulator marks every run and every lap of a loop, like the START control of Triton's sequence batcher):
- a row that starts a run (`sequence_start`), or carries a run id the stream has not seen: the stream starts
  over from the initial state, deliberately (a redelivered start of the run in force is a redelivery);
- a row of an earlier run of the stream (its run id among the last ones replaced): refused, with a reason;
- newer than the last applied index: apply the step (a jump forward is a gap: counted, still applied; a jump
  of more than `max_jump` indices is refused as implausible);
- not newer and still in the recent history: a redelivery; answer with the outputs recorded the first time
  and leave the state alone, provided the input is the same (the same index with other values is refused:
  it is not a redelivery);
- older than the history remembers (rows without a run id only): the source started the stream over
  without saying so: the stream restarts from the initial state at that index, as the offline model would.
A refused row raises RefusedRowError: the request applies nothing, and the caller sends its other rows again.

State is written through to a store (Redis in production) before it becomes visible in memory, so a crash
between the two can only lose a step that was never answered, and a restart resumes every stream where it
stopped. A step changes few of the state's values (the GRU's 64 and a handful of the rule's ring buffers, of
~2,250), so the Redis store journals what each step changed next to its output and writes the whole state
only every `SNAPSHOT_EVERY` steps; a restart applies the journal to the snapshot, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from smap_shared.model.scorer import Scorer, StepOutput
from smap_shared.settings import STATE_HISTORY

Array = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

DEFAULT_STREAM = "__default__"
#: A jump forward of more indices than this is refused as implausible (11.6 days of a 1 Hz stream).
DEFAULT_MAX_JUMP = 1_000_000
#: Run ids remembered after they were replaced, so a late frame of an old run is recognised and refused.
PAST_RUNS = 4


class RefusedRowError(ValueError):
    """A row the model will not apply (its stream's state is left untouched); the message says why and starts
    with REFUSED, which the worker reads as a permanent fault of that row."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{REFUSED} {why}")


REFUSED = "refused:"


def input_digest(row: Array) -> str:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype="<f8").tobytes(), digest_size=8).hexdigest()


@dataclass
class StreamState:
    hidden: Array
    last_index: int | None = None
    steps: int = 0
    gaps: int = 0  # total indices skipped over the stream's life
    resets: int = 0  # times the source started the stream over
    history: dict[int, StepOutput] = field(default_factory=dict)  # insertion (= index) order, oldest first
    run_id: str | None = None  # the source's run in force (None: the source marks no runs)
    past_runs: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepResult:
    output: StepOutput
    duplicate: bool
    gap: int  # indices skipped right before this step (0 when contiguous)


@dataclass(frozen=True)
class StateDelta:
    """What one step changed of a stream's state vector: the positions whose bits changed and their new values.
    Compared as bits, so applying it reproduces the new state exactly (NaN included).

    >>> before = np.zeros(5); after = before.copy(); after[[1, 3]] = [0.5, np.nan]
    >>> d = StateDelta.between(before, after)
    >>> d.positions.tolist()
    [1, 3]
    >>> s = before.copy(); d.apply(s); bool(np.array_equal(s, after, equal_nan=True))
    True
    """

    positions: npt.NDArray[np.uint32]
    values: Array

    @classmethod
    def between(cls, before: Array, after: Array) -> StateDelta:
        a, b = np.ascontiguousarray(before, dtype=np.float64), np.ascontiguousarray(after, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"states of shapes {a.shape} and {b.shape} have no delta")
        changed = np.flatnonzero(a.reshape(-1).view(np.int64) != b.reshape(-1).view(np.int64))
        return cls(changed.astype(np.uint32), b.reshape(-1)[changed])

    def apply(self, state: Array) -> None:
        """In place, on a flat state vector."""
        state[self.positions] = self.values


@dataclass(frozen=True)
class StreamUpdate:
    """What one request changed of one stream: its final state, and the outputs it recorded (index order),
    each with what its step changed of the state. `restarted`: the stream started over inside the request, so
    the stored history is replaced, not extended."""

    stream_id: str
    state: StreamState
    outputs: list[tuple[int, StepOutput, StateDelta]]
    restarted: bool = False


class StateStore(Protocol):
    def load_all(self) -> dict[str, StreamState]: ...

    def save_many(self, updates: list[StreamUpdate]) -> None:
        """Persist every update at once (all or nothing, as far as the store allows); raises on failure."""


class NullStore:
    def load_all(self) -> dict[str, StreamState]:
        return {}

    def save_many(self, updates: list[StreamUpdate]) -> None:
        return None


#: A history entry in the store: magic, index, score, threshold, signal, cause, detected, n, k, then the
#: reconstruction and error (float64 x n each), the step's state delta (k uint32 positions, k float64 values)
#: and the input digest (ASCII). Binary: json.dumps of the 2 x n floats cost ~40 us per step, this ~2 us.
#: Entries of earlier versions still decode: H1 (no delta) and JSON.
_ENTRY = struct.Struct("<2sqdddq?II")
_MAGIC = b"H2"
_ENTRY_V1 = struct.Struct("<2sqdddq?I")
_MAGIC_V1 = b"H1"
_NO_DELTA = 0xFFFFFFFF  # k of an entry journaled without a delta


def encode_output(index: int, out: StepOutput, delta: StateDelta | None = None) -> bytes:
    n = out.reconstruction.shape[0]
    k = _NO_DELTA if delta is None else delta.positions.size
    parts = [
        _ENTRY.pack(_MAGIC, index, out.anomaly_score, out.threshold, out.detector_signal, out.alarm_cause,
                    out.anomaly_detected, n, k),
        np.ascontiguousarray(out.reconstruction, dtype="<f8").tobytes(),
        np.ascontiguousarray(out.sensor_error, dtype="<f8").tobytes(),
    ]
    if delta is not None:
        parts += (np.ascontiguousarray(delta.positions, dtype="<u4").tobytes(),
                  np.ascontiguousarray(delta.values, dtype="<f8").tobytes())
    parts.append(out.input_digest.encode("ascii"))
    return b"".join(parts)


def decode_output(raw: str | bytes) -> tuple[int, StepOutput]:
    index, out, _ = decode_entry(raw)
    return index, out


def decode_entry(raw: str | bytes) -> tuple[int, StepOutput, StateDelta | None]:
    """A history entry: its index, output and, where it was journaled with one, its step's state delta."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data[:2] in (_MAGIC, _MAGIC_V1):
        delta: StateDelta | None = None
        if data[:2] == _MAGIC:
            _, index, score, threshold, signal, cause, detected, n, k = _ENTRY.unpack_from(data)
            at = _ENTRY.size
        else:
            _, index, score, threshold, signal, cause, detected, n = _ENTRY_V1.unpack_from(data)
            at, k = _ENTRY_V1.size, _NO_DELTA
        recon = np.frombuffer(data, dtype="<f8", count=n, offset=at).astype(np.float64)
        err = np.frombuffer(data, dtype="<f8", count=n, offset=at + 8 * n).astype(np.float64)
        at += 16 * n
        if k != _NO_DELTA:
            delta = StateDelta(np.frombuffer(data, dtype="<u4", count=k, offset=at).astype(np.uint32),
                               np.frombuffer(data, dtype="<f8", count=k, offset=at + 4 * k).astype(np.float64))
            at += 12 * k
        return int(index), StepOutput(
            reconstruction=recon, sensor_error=err, anomaly_score=float(score), anomaly_detected=bool(detected),
            threshold=float(threshold), detector_signal=float(signal), alarm_cause=int(cause),
            input_digest=data[at:].decode("ascii"),
        ), delta
    d = json.loads(data)
    out = StepOutput(
        reconstruction=np.asarray(d["r"], dtype=np.float64), sensor_error=np.asarray(d["e"], dtype=np.float64),
        anomaly_score=float(d["s"]), anomaly_detected=bool(d["d"]), threshold=float(d["t"]),
        detector_signal=float(d.get("g", "nan")),  # absent in history written before the output existed
        alarm_cause=int(d.get("c", 0)), input_digest=str(d.get("x", "")),
    )
    return int(d["i"]), out, None


class StreamRegistry:
    """All streams of one model. Not thread-safe: one Triton instance owns one model's streams."""

    def __init__(self, scorer: Scorer, store: StateStore | None = None, history: int = STATE_HISTORY,
                 max_jump: int = DEFAULT_MAX_JUMP) -> None:
        self.scorer = scorer
        self.store: StateStore = store or NullStore()
        self.history = history
        self.max_jump = max_jump
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

    def step(self, x: Array, stream_id: str | None = None, index: int | None = None, run_id: str | None = None,
             start: bool = False) -> StepResult:
        return self.step_many(np.asarray(x, dtype=np.float64).reshape(1, -1), [stream_id], [index], [run_id],
                              [start])[0]

    def _fresh(self, st: StreamState, run_id: str | None) -> StreamState:
        """The stream started over (from the initial state), keeping its counters and the runs it replaced."""
        past = st.past_runs
        if st.run_id is not None and st.run_id != run_id:
            past = (*past, st.run_id)[-PAST_RUNS:]
        return StreamState(hidden=self.scorer.initial_state(), gaps=st.gaps,
                           resets=st.resets + (1 if st.steps else 0), run_id=run_id, past_runs=past)

    def step_many(
        self, rows: Array, stream_ids: Sequence[str | None], indices: Sequence[int | None],
        run_ids: Sequence[str | None] | None = None, starts: Sequence[bool] | None = None,
    ) -> list[StepResult]:
        """Apply K rows (K, n) of any streams, each row with its stream id and index; one result per row.

        Rows of one stream are applied in their order in the request; the d-th rows of all streams form a
        wave that goes through one vectorised network step. Nothing is visible (in memory or to a later
        request) until every changed stream is written to the store in one go: if that fails, the request
        fails as a whole and a retry recomputes the same outputs.
        """
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or len(stream_ids) != x.shape[0] or len(indices) != x.shape[0]:
            raise ValueError(
                f"input_data {list(x.shape)}, stream_id [{len(stream_ids)}] and sequence_index [{len(indices)}] "
                "must have the same number of rows"
            )
        runs = list(run_ids) if run_ids is not None else [None] * x.shape[0]
        begins = list(starts) if starts is not None else [False] * x.shape[0]
        if len(runs) != x.shape[0] or len(begins) != x.shape[0]:
            raise ValueError(f"run_id [{len(runs)}] and sequence_start [{len(begins)}] must have "
                             f"{x.shape[0]} rows like input_data")
        sids = [s or DEFAULT_STREAM for s in stream_ids]
        positions: dict[str, list[int]] = {}
        for pos, sid in enumerate(sids):
            positions.setdefault(sid, []).append(pos)
        work = {sid: self.state(sid) for sid in positions}
        recorded: dict[str, list[tuple[int, StepOutput, StateDelta]]] = {}
        restarted: set[str] = set()
        own_history: set[str] = set()  # streams whose history dict is this request's copy
        results: list[StepResult | None] = [None] * x.shape[0]
        digests = [input_digest(row) for row in x]  # once per row: the dedupe check and the recorded output

        def start_over(sid: str, st: StreamState, run: str | None) -> StreamState:
            fresh = work[sid] = self._fresh(st, run)
            own_history.add(sid)
            restarted.add(sid)
            recorded[sid] = []  # the store replaces the history: only outputs from here on are recorded
            return fresh

        for depth in range(max(len(p) for p in positions.values())):
            wave: list[tuple[int, str]] = []
            for sid, pos_list in positions.items():
                if depth >= len(pos_list):
                    continue
                pos = pos_list[depth]
                index = indices[pos]
                run = runs[pos] or None
                st = work[sid]
                new_run = run is not None and (run != st.run_id or begins[pos])
                if run is not None and run != st.run_id and run in st.past_runs:
                    raise RefusedRowError(f"stream {sid}: index {index} belongs to run {run}, which the stream "
                                          f"left for run {st.run_id}")
                if new_run and run == st.run_id and index is not None and index in st.history:
                    new_run = False  # the run's start, redelivered
                if new_run:
                    if st.last_index is not None:
                        log.info("stream %s starts run %s at index %s (last applied %s of run %s)", sid, run,
                                 index, st.last_index, st.run_id)
                    st = start_over(sid, st, run)
                elif index is not None and st.last_index is not None and index <= st.last_index:
                    cached = st.history.get(index)
                    if cached is not None:
                        if cached.input_digest and cached.input_digest != digests[pos]:
                            raise RefusedRowError(
                                f"stream {sid}: index {index} was already applied with other values (not a "
                                "redelivery; a source that starts over must mark a new run)")
                        results[pos] = StepResult(cached, duplicate=True, gap=0)
                        continue
                    if run is not None:
                        raise RefusedRowError(f"stream {sid}: index {index} of run {run} is older than the "
                                              f"{len(st.history)}-step history (last applied {st.last_index})")
                    log.warning("stream %s restarts at index %d (last applied %d, beyond the %d-step history)",
                                sid, index, st.last_index, len(st.history))
                    st = start_over(sid, st, run)
                elif (index is not None and st.last_index is not None
                      and index - st.last_index - 1 > self.max_jump):
                    raise RefusedRowError(f"stream {sid}: index {index} jumps {index - st.last_index - 1} indices "
                                          f"past {st.last_index} (more than {self.max_jump}: implausible)")
                wave.append((pos, sid))
            if not wave:
                continue
            stepped = self.scorer.step_many(x[[p for p, _ in wave]], np.stack([work[s].hidden for _, s in wave]))
            for (pos, sid), (step_out, hidden) in zip(wave, stepped, strict=True):
                st = work[sid]
                index = indices[pos]
                out = replace(step_out, input_digest=digests[pos])
                gap = 0 if index is None or st.last_index is None else index - st.last_index - 1
                history = st.history
                if sid not in own_history:
                    history = dict(history)
                    own_history.add(sid)
                if index is not None:
                    history[index] = out
                    while len(history) > self.history:
                        del history[next(iter(history))]
                    recorded.setdefault(sid, []).append((index, out, StateDelta.between(st.hidden, hidden)))
                work[sid] = StreamState(
                    hidden=hidden, last_index=index if index is not None else st.last_index,
                    steps=st.steps + 1, gaps=st.gaps + gap, resets=st.resets, history=history,
                    run_id=st.run_id, past_runs=st.past_runs,
                )
                if gap:
                    log.warning("stream %s: gap of %d indices before %s", sid, gap, index)
                results[pos] = StepResult(out, duplicate=False, gap=gap)
        changed = [sid for sid in positions if sid in own_history]
        # Write through first: if the store fails, nothing changed and the caller's retry recomputes. A stream
        # new to this registry starts from the initial state: for the store too (whatever it held is replaced).
        self.store.save_many([
            StreamUpdate(sid, work[sid], recorded.get(sid, []),
                         restarted=sid in restarted or sid not in self.streams)
            for sid in changed
        ])
        for sid in changed:
            self.streams[sid] = work[sid]
        return [r for r in results if r is not None]


TRIM_EVERY = 32  # RedisStateStore: steps between two trims of a stream's output list
#: RedisStateStore: the whole state is written at most this many steps apart (at most half the history, so
#: the journal since the last snapshot is always in the output list); the steps between journal deltas only.
SNAPSHOT_EVERY = 64


class RedisStateStore:
    """One Redis value per stream (a snapshot of its state and counters) and a capped list of its recent
    outputs, each with what its step changed of the state. The state is ~18 KB (the rule's ring buffers),
    a step changes ~70 of its ~2,250 values: writing the whole state every step was most of a row's cost."""

    def __init__(self, url: str, model: str, history: int = STATE_HISTORY) -> None:
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = f"smap:state:{model}:"
        self.history = history
        self.snapshot_every = max(1, min(SNAPSHOT_EVERY, history // 2))
        # Per stream, the steps its stored state holds (snapshot + journal); a stream not here has no stored
        # state this process wrote or read, and gets a snapshot at its next write.
        self._stored_steps: dict[str, int] = {}

    def _keys(self, stream_id: str) -> tuple[str, str]:
        return self.prefix + stream_id, self.prefix + stream_id + ":hist"

    @staticmethod
    def encode_state(st: StreamState) -> bytes:
        """One value per stream: a JSON header line, then the state vector (float64). One SET instead of an
        8-field HSET: redis-py's command packing, per argument, was most of a step's persistence cost."""
        header = json.dumps({
            "shape": list(st.hidden.shape), "last_index": st.last_index, "steps": st.steps, "gaps": st.gaps,
            "resets": st.resets, "run_id": st.run_id, "past_runs": list(st.past_runs),
        }).encode()
        return header + b"\n" + np.ascontiguousarray(st.hidden, dtype="<f8").tobytes()

    @staticmethod
    def decode_state(raw: bytes, history: dict[int, StepOutput]) -> StreamState:
        header, _, body = raw.partition(b"\n")
        h = json.loads(header)
        return StreamState(
            hidden=np.frombuffer(body, dtype="<f8").reshape(tuple(h["shape"])).astype(np.float64),
            last_index=h["last_index"], steps=h["steps"], gaps=h["gaps"], resets=h["resets"], history=history,
            run_id=h["run_id"], past_runs=tuple(h["past_runs"]),
        )

    def _needs_snapshot(self, u: StreamUpdate) -> bool:
        """Whole state now? When the stream has no snapshot of ours, started over, stepped without an index
        (a step with no journal entry), or crossed its next snapshot step. The crossings are offset per stream
        (by its id) so a fleet's streams do not all write their whole state in the same second."""
        stored = self._stored_steps.get(u.stream_id)
        if u.restarted or stored is None or u.state.steps - stored != len(u.outputs):
            return True
        phase = zlib.crc32(u.stream_id.encode()) % self.snapshot_every
        return (u.state.steps + phase) // self.snapshot_every != (stored + phase) // self.snapshot_every

    def save_many(self, updates: list[StreamUpdate]) -> None:
        """One MULTI/EXEC pipeline for the whole request: every stream's new outputs with their state deltas,
        and the whole state of the streams due a snapshot, or nothing.

        A journal only extends a snapshot that is still there: Redis keeps nothing on disk here, so a Redis
        restart (or anyone deleting the keys) loses them while the model runs on. A stream's output list is
        never empty once written, so an RPUSH that answers with just the entries it pushed means the stored
        state was lost: the whole state is written at once (a second round trip, only then)."""
        if not updates:
            return
        snapshot = {u.stream_id for u in updates if self._needs_snapshot(u)}
        pipe = self.r.pipeline(transaction=True)
        if snapshot:
            pipe.mset({self._keys(u.stream_id)[0]: self.encode_state(u.state) for u in updates
                       if u.stream_id in snapshot})
        journaled: list[tuple[int, StreamUpdate, int]] = []  # (reply position, update, entries pushed)
        for u in updates:
            hist = self._keys(u.stream_id)[1]
            if u.restarted:
                pipe.delete(hist)  # the previous run's outputs must never answer this run's indices
            if u.outputs:
                pushed = u.outputs[-self.history:]
                if u.stream_id not in snapshot:
                    journaled.append((len(pipe), u, len(pushed)))
                pipe.rpush(hist, *(encode_output(i, o, d) for i, o, d in pushed))
                # Trimmed every TRIM_EVERY steps, not every step (one command less per row): the list holds
                # at most history + TRIM_EVERY + one request's rows, and load_all reads its last `history`.
                if u.restarted or (u.state.steps - len(u.outputs)) // TRIM_EVERY != u.state.steps // TRIM_EVERY:
                    pipe.ltrim(hist, -self.history, -1)
        replies = pipe.execute()
        lost = [u for at, u, n in journaled if replies[at] == n]
        if lost:
            log.warning("the stored state of %d stream(s) was gone (Redis restarted or the keys were deleted): "
                        "writing it whole again", len(lost))
            self.r.mset({self._keys(u.stream_id)[0]: self.encode_state(u.state) for u in lost})
        for u in updates:
            self._stored_steps[u.stream_id] = u.state.steps

    def _replay(self, sid: str, state: StreamState, entries: list[tuple[int, StepOutput, StateDelta | None]]
                ) -> StreamState | None:
        """The snapshot with the journal of every entry after it applied, in order (the list holds one run, in
        the order its steps were applied: indices increase); None if a step after the snapshot has no delta."""
        hidden = state.hidden.copy()
        last, steps, gaps = state.last_index, state.steps, state.gaps
        for index, _, delta in entries:
            if last is not None and index <= last:
                continue
            if delta is None or (delta.positions.size and int(delta.positions.max()) >= hidden.size):
                log.error("stream %s: output %d came after the stored state and carries no state delta that "
                          "fits it: the stream starts over", sid, index)
                return None
            delta.apply(hidden)
            gaps += 0 if last is None else index - last - 1
            last, steps = index, steps + 1
        return replace(state, hidden=hidden, last_index=last, steps=steps, gaps=gaps)

    def _legacy_state(self, key: str, history: dict[int, StepOutput]) -> StreamState:
        """A state stored by an earlier version (one Redis hash per stream)."""
        h: dict[bytes, bytes] = self.r.hgetall(key)  # type: ignore[assignment]
        shape = tuple(json.loads(h[b"shape"]))
        last = h[b"last_index"].decode()
        return StreamState(
            hidden=np.frombuffer(h[b"hidden"], dtype="<f8").reshape(shape).astype(np.float64),
            last_index=int(last) if last else None,
            steps=int(h[b"steps"]), gaps=int(h[b"gaps"]), resets=int(h.get(b"resets", 0)),
            history=history, run_id=h.get(b"run_id", b"").decode() or None,
            past_runs=tuple(json.loads(h.get(b"past_runs", b"[]"))),
        )

    def load_all(self) -> dict[str, StreamState]:
        out: dict[str, StreamState] = {}
        for raw_key in self.r.scan_iter(match=self.prefix + "*", count=500):
            key = raw_key.decode()
            if key.endswith(":hist"):
                continue
            sid = key[len(self.prefix):]
            entries = [decode_entry(item) for item in self.r.lrange(key + ":hist", -self.history, -1)]
            history = {i: o for i, o, _ in entries}
            if self.r.type(key) == b"hash":
                state = self._legacy_state(key, history)
            else:
                raw: bytes = self.r.get(key)  # type: ignore[assignment]
                state = self.decode_state(raw, history)
            replayed = self._replay(sid, state, entries)
            if replayed is None:
                continue
            out[sid] = replayed
            self._stored_steps[sid] = replayed.steps
        return out

    def clear(self) -> None:
        for key in self.r.scan_iter(match=self.prefix + "*", count=500):
            self.r.delete(key)
