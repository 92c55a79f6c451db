"""The alert lifecycle, pure: one state machine per (rule, stream) -- per (rule, stream, sensor) for a
sensor-scoped rule -- fed one InferenceResult at a time, returning the transitions it caused.

    idle --first matching frame--> pending --condition met--> firing --resolve_after_frames clear--> idle
                                      +-condition broken before firing--> resolved (never fired, no notice)

A firing is notified (`Transition.notify`) only when the rule has channels and no notification for the same
lifecycle went out within `cooldown_s` before (frame time): a long anomaly stays one firing alert with one
notification, and a flapping one is not notified again until the cooldown has passed. Every decision uses
frame timestamps, never the wall clock, so a replay decides exactly as the live run did.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from smap_shared.alerting.rules import AlertRule, Consecutive, DetectionsInWindow, ScoreAbove
from smap_shared.model.rules import cause_names
from smap_shared.schemas import (
    SENSOR_KEY,
    AlertState,
    Crossing,
    InferenceResult,
    SensorContribution,
    TripEvidence,
)

Phase = Literal["idle", "pending", "firing"]
LifecycleKey = tuple[str, str]  # (rule name, lifecycle stream key)


def stream_key(stream_id: str, sensor: str | None) -> str:
    """The lifecycle's stream: the stream id, plus `#sensor_<i>` for a sensor-scoped rule."""
    return stream_id if sensor is None else f"{stream_id}#{sensor}"


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class LifecycleState:
    phase: Phase = "idle"
    streak: int = 0  # consecutive matching frames (pending/firing)
    clear: int = 0  # consecutive clear frames while firing
    since: datetime | None = None  # first matching frame of the current alert
    hits: tuple[datetime, ...] = ()  # detections_in_window: times of the latest matching frames
    last_index: int | None = None  # the last frame applied (a repeat of it is ignored)
    last_notified_at: datetime | None = None  # the last firing notified (cooldown)
    notified: bool = False  # the current alert's firing was notified
    #: per sensor, the largest reconstruction error since the alert opened: the frame that trips a detector
    #: is often not the one that fires (N consecutive frames later), and its culprit must not be lost
    peak: tuple[tuple[str, float], ...] = ()
    #: the detector's alarm causes (InferenceResult.alarm_cause bits) seen since the alert opened
    causes: int = 0
    #: the frame that opened the alert
    evidence: TripEvidence | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase, "streak": self.streak, "clear": self.clear,
            "since": None if self.since is None else self.since.isoformat(),
            "hits": [h.isoformat() for h in self.hits], "last_index": self.last_index,
            "last_notified_at": None if self.last_notified_at is None else self.last_notified_at.isoformat(),
            "notified": self.notified, "peak": [list(p) for p in self.peak], "causes": self.causes,
            "evidence": None if self.evidence is None else self.evidence.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LifecycleState:
        return cls(
            phase=d["phase"], streak=int(d["streak"]), clear=int(d["clear"]), since=_ts(d["since"]),
            hits=tuple(datetime.fromisoformat(h) for h in d["hits"]), last_index=d["last_index"],
            last_notified_at=_ts(d["last_notified_at"]), notified=bool(d["notified"]),
            peak=tuple((str(k), float(v)) for k, v in d.get("peak", [])), causes=int(d.get("causes", 0)),
            evidence=None if d.get("evidence") is None else TripEvidence.model_validate(d["evidence"]),
        )


@dataclass(frozen=True)
class Transition:
    rule: AlertRule
    key: LifecycleKey
    stream_id: str
    satellite_id: str
    entity: str
    sensor: str | None
    from_state: AlertState | None  # None: the alert opens
    to_state: AlertState
    at: datetime  # the frame's timestamp
    index: int  # the frame's index
    score: float  # anomaly_score of the frame
    started_at: datetime
    top_sensors: tuple[SensorContribution, ...] = ()
    alarm_causes: tuple[str, ...] = ()  # why the detector alarmed since the alert opened (names)
    notify: bool = False
    message: str = ""
    fired: bool = field(default=False)  # for a resolution: whether the alert had fired
    evidence: TripEvidence | None = None  # the frame that opened the alert


def top_sensors(errors: Mapping[str, float], n: int) -> tuple[SensorContribution, ...]:
    """The n sensors with the largest reconstruction error (ties: lower sensor index first)."""

    def order(item: tuple[str, float]) -> tuple[float, int]:
        m = SENSOR_KEY.match(item[0])
        return (-item[1], int(m.group(1)) if m else 1 << 30)

    ranked = sorted(errors.items(), key=order)[:n]
    return tuple(SensorContribution(id=k, error=v) for k, v in ranked)


def merge_peak(peak: tuple[tuple[str, float], ...], errors: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Per sensor, the larger of the running peak and this frame's error (sensor order kept)."""
    old = dict(peak)
    return tuple((k, max(v, old.get(k, v))) for k, v in errors.items())


def _absorb(st: LifecycleState, result: InferenceResult) -> LifecycleState:
    """The frame's evidence joins the open alert's: per-sensor peak errors and the detector's alarm causes."""
    return replace(st, peak=merge_peak(st.peak, result.sensor_error), causes=st.causes | result.alarm_cause)


def _closed(st: LifecycleState, **kw: Any) -> LifecycleState:
    """Back to idle: the alert's counters and evidence are dropped (cooldown bookkeeping stays)."""
    return replace(st, phase="idle", streak=0, clear=0, since=None, peak=(), causes=0, evidence=None, **kw)


def trip_evidence(rule: AlertRule, result: InferenceResult, sensor: str | None) -> TripEvidence:
    """What the opening frame showed: the rule's sensor (else the one with the largest error) against its
    reconstruction, and what the rule crossed there -- a score_above rule its own threshold, the others the
    detector's signal against the detector's threshold (a value-step or quiet-value alarm trips below it,
    the causes say why)."""
    top = sensor or top_sensors(result.sensor_error, 1)[0].id
    cond = rule.condition
    crossing: Crossing | None
    if isinstance(cond, ScoreAbove):
        what: Literal["anomaly_score", "sensor_error"] = "anomaly_score" if sensor is None else "sensor_error"
        value = result.anomaly_score if sensor is None else result.sensor_error[sensor]
        crossing = Crossing(what=what, value=value, threshold=cond.threshold)
    elif result.detector_signal is not None:
        crossing = Crossing(what="detector_signal", value=result.detector_signal, threshold=result.threshold)
    else:
        crossing = None
    return TripEvidence(
        index=result.index, at=result.timestamp, sensor=top, value=result.sensor_values[top],
        reconstruction=result.reconstruction[top], error=result.sensor_error[top],
        anomaly_score=result.anomaly_score, crossing=crossing, alarm_causes=result.alarm_causes)


def _hit(rule: AlertRule, result: InferenceResult, sensor: str | None) -> bool:
    cond = rule.condition
    if isinstance(cond, ScoreAbove):
        value = result.anomaly_score if sensor is None else result.sensor_error[sensor]
        return value > cond.threshold
    return result.anomaly_detected


def _met(rule: AlertRule, st: LifecycleState, at: datetime) -> bool:
    cond = rule.condition
    if isinstance(cond, Consecutive):
        return st.streak >= cond.frames
    if isinstance(cond, ScoreAbove):
        return st.since is not None and (at - st.since).total_seconds() >= cond.duration_s
    assert isinstance(cond, DetectionsInWindow)
    return len(st.hits) >= cond.count


def step(
    rule: AlertRule, st: LifecycleState, result: InferenceResult, sensor: str | None,
    available: frozenset[str] | None = None, stale: bool = False,
) -> tuple[LifecycleState, list[Transition]]:
    """One frame through one lifecycle: the new state and the transitions (0, 1 or 2: pending + firing).
    `available`: the channels configured in this deployment (None: all); a rule's other channels are ignored,
    so an alert is never marked notified when nothing could be sent. `stale`: the frame is too old to page
    anyone (a replay of retained results): the firing is recorded, not notified."""
    channels = [c for c in rule.channels if available is None or c in available]
    if result.duplicate or st.last_index == result.index:
        return st, []  # a redelivered frame: already applied
    at = result.timestamp
    hit = _hit(rule, result, sensor)
    cond = rule.condition
    if isinstance(cond, DetectionsInWindow):
        horizon = at - timedelta(seconds=cond.window_s)
        hits = tuple(h for h in st.hits if h >= horizon) + ((at,) if hit else ())
        st = replace(st, hits=hits[-cond.count :])
    st = replace(st, last_index=result.index)
    out: list[Transition] = []

    def emit(frm: AlertState | None, to: AlertState, *, notify: bool = False, message: str = "",
             fired: bool = False) -> None:
        assert st.since is not None
        out.append(Transition(
            rule=rule, key=(rule.name, stream_key(result.stream_id, sensor)), stream_id=result.stream_id,
            satellite_id=result.satellite_id, entity=result.entity, sensor=sensor, from_state=frm,
            to_state=to, at=at, index=result.index, score=result.anomaly_score, started_at=st.since,
            top_sensors=top_sensors(dict(st.peak), rule.top_sensors),
            alarm_causes=tuple(cause_names(st.causes)), notify=notify, message=message, fired=fired,
            evidence=st.evidence,
        ))

    if st.phase == "idle":
        if not hit:
            return st, out
        st = _absorb(replace(st, phase="pending", streak=1, clear=0, since=at, notified=False, peak=(), causes=0,
                             evidence=trip_evidence(rule, result, sensor)), result)
        emit(None, "pending", message=f"condition {cond.kind} started")
    elif st.phase == "pending":
        still = bool(st.hits) if isinstance(cond, DetectionsInWindow) else hit
        if not still:
            emit("pending", "resolved", message="condition cleared before firing")
            return _closed(st), out
        st = _absorb(replace(st, streak=st.streak + 1 if hit else st.streak), result)
    else:  # firing
        st = _absorb(replace(st, streak=st.streak + 1 if hit else 0, clear=0 if hit else st.clear + 1), result)
        if st.clear >= rule.resolve_after_frames:
            notify = rule.notify_resolved and st.notified and bool(channels)
            emit("firing", "resolved", notify=notify, fired=True,
                 message=f"clear for {st.clear} frames")
            return _closed(st, notified=False), out
        return st, out
    if st.phase == "pending" and _met(rule, st, at):
        cooling = st.last_notified_at is not None and (
            (at - st.last_notified_at).total_seconds() < rule.cooldown_s)
        notify = bool(channels) and not cooling and not stale
        if notify:
            message = "notified: " + ", ".join(channels)
        elif rule.channels and not channels:
            message = "not notified: none of its channels is configured (" + ", ".join(rule.channels) + ")"
        elif not channels:
            message = "no notification channels"
        elif stale:
            message = "not notified: the frame is too old (a replay of retained results)"
        else:
            assert st.last_notified_at is not None
            until = st.last_notified_at + timedelta(seconds=rule.cooldown_s)
            message = f"notification suppressed: cooldown until {until.isoformat()}"
        st = replace(st, phase="firing", clear=0, notified=notify,
                     last_notified_at=at if notify else st.last_notified_at)
        emit("pending", "firing", notify=notify, message=message)
    return st, out


class Engine:
    """Every enabled rule over every result; the states (rule, stream key) -> LifecycleState are the
    caller's (persisted with the transitions); missing keys start idle."""

    def __init__(self, rules: Sequence[AlertRule], available: frozenset[str] | None = None,
                 notify_max_age_s: float = 0.0) -> None:
        self.rules = [r for r in rules if r.enabled]
        self.available = available  # configured channels; None: every channel a rule names
        self.notify_max_age_s = notify_max_age_s  # 0: frames of any age may notify

    def evaluate(
        self, result: InferenceResult, states: MutableMapping[LifecycleKey, LifecycleState],
        now: datetime | None = None,
    ) -> list[Transition]:
        """`now` (the wall clock, given by the caller so this stays pure) only decides whether a frame is too
        old to notify; every lifecycle decision uses frame time."""
        stale = (now is not None and self.notify_max_age_s > 0
                 and (now - result.timestamp).total_seconds() > self.notify_max_age_s)
        out: list[Transition] = []
        sensors = list(result.sensor_error)
        for rule in self.rules:
            if not rule.matches(result.satellite_id, result.entity):
                continue
            for sensor in rule.sensors_of(sensors):
                key = (rule.name, stream_key(result.stream_id, sensor))
                before = states.get(key, LifecycleState())
                after, transitions = step(rule, before, result, sensor, self.available, stale)
                if after != before:
                    states[key] = after
                out.extend(transitions)
        return out
