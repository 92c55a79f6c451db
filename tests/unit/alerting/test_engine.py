"""The alert lifecycle on hand-made sequences: consecutive-count edges, durations, windows, cooldown,
resolve and re-fire, duplicates, sensor scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from smap_shared.alerting.engine import Engine, LifecycleKey, LifecycleState, Transition, top_sensors
from smap_shared.alerting.rules import AlertRule
from smap_shared.schemas import InferenceResult

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
STEP = timedelta(seconds=5)


def result(i: int, detected: bool, score: float = 0.1, errors: list[float] | None = None,
           stream: tuple[str, str] = ("SAT-001", "A-1"), **kw: Any) -> InferenceResult:
    errors = errors or [0.5, 0.1, 0.3]
    sensors = {f"sensor_{k}": 0.0 for k in range(len(errors))}
    return InferenceResult(
        stream_id=f"{stream[0]}/{stream[1]}", satellite_id=stream[0], entity=stream[1], model_name="m",
        timestamp=T0 + i * STEP, index=i, sensor_values=sensors, reconstruction=sensors,
        sensor_error={f"sensor_{k}": e for k, e in enumerate(errors)}, anomaly_score=score,
        anomaly_detected=detected, threshold=1.0, inference_time_ms=1.0, **kw)


def rule(**kw: Any) -> AlertRule:
    base: dict[str, Any] = {"name": "r", "severity": "critical", "channels": ["slack"],
                            "condition": {"kind": "consecutive", "frames": 3}, "resolve_after_frames": 2,
                            "cooldown_s": 60}
    return AlertRule.model_validate({**base, **kw})


def run(r: AlertRule, flags: str, states: dict[LifecycleKey, LifecycleState] | None = None,
        start: int = 0) -> list[Transition]:
    """flags: one char per frame, 'x' detected, '.' clear."""
    engine = Engine([r])
    states = {} if states is None else states
    out: list[Transition] = []
    for i, f in enumerate(flags):
        out.extend(engine.evaluate(result(start + i, f == "x"), states))
    return out


def summary(ts: list[Transition]) -> list[tuple[int, str | None, str, bool]]:
    return [(t.index, t.from_state, t.to_state, t.notify) for t in ts]


def test_fires_on_exactly_n_consecutive_frames() -> None:
    assert summary(run(rule(), "xx.xx.")) == [
        (0, None, "pending", False), (2, "pending", "resolved", False),
        (3, None, "pending", False), (5, "pending", "resolved", False)]
    ts = run(rule(), "..xxx")
    assert summary(ts) == [(2, None, "pending", False), (4, "pending", "firing", True)]
    assert ts[-1].started_at == T0 + 2 * STEP and ts[-1].at == T0 + 4 * STEP


def test_one_frame_rule_opens_and_fires_on_the_same_frame() -> None:
    assert summary(run(rule(condition={"kind": "consecutive", "frames": 1}), ".x")) == [
        (1, None, "pending", False), (1, "pending", "firing", True)]


def test_a_long_anomaly_is_one_firing_with_one_notification() -> None:
    ts = run(rule(), "x" * 500)
    assert summary(ts) == [(0, None, "pending", False), (2, "pending", "firing", True)]


def test_resolves_after_the_clear_frames_and_a_blip_does_not_resolve() -> None:
    ts = run(rule(), "xxx.x.x..")
    assert summary(ts) == [(0, None, "pending", False), (2, "pending", "firing", True),
                           (8, "firing", "resolved", False)]
    assert ts[-1].fired


def test_refire_within_cooldown_is_recorded_but_not_notified_and_after_it_is() -> None:
    # frames are 5 s apart, cooldown 60 s: re-firing at frame 7 (35 s after) is suppressed, at 30 notified
    ts = run(rule(), "xxx..xxx" + "." * 2 + "." * 18 + "xxx")
    firings = [t for t in ts if t.to_state == "firing"]
    assert [(t.index, t.notify) for t in firings] == [(2, True), (7, False), (30, True)]
    assert "cooldown until" in firings[1].message
    # the cooldown counts from the last notification, not from the suppressed firing
    ts = run(rule(cooldown_s=40), "xxx..xxx.." + "xxx")
    assert [(t.index, t.notify) for t in ts if t.to_state == "firing"] == [(2, True), (7, False), (12, True)]


def test_no_channels_fires_without_notifying_and_resolution_notice_is_optional() -> None:
    ts = run(rule(channels=[]), "xxx..")
    assert [(t.to_state, t.notify) for t in ts] == [("pending", False), ("firing", False), ("resolved", False)]
    ts = run(rule(notify_resolved=True), "xxx..")
    assert [(t.to_state, t.notify) for t in ts] == [("pending", False), ("firing", True), ("resolved", True)]


def test_duplicates_and_repeated_indices_are_ignored() -> None:
    engine, states = Engine([rule()]), {}  # type: ignore[var-annotated]
    out = []
    for r in (result(0, True), result(0, True), result(1, True, duplicate=True), result(1, True),
              result(2, True)):
        out.extend(engine.evaluate(r, states))
    assert summary(out) == [(0, None, "pending", False), (2, "pending", "firing", True)]


def test_state_survives_a_json_round_trip_mid_alert() -> None:
    states: dict[LifecycleKey, LifecycleState] = {}
    first = run(rule(), "xx", states)
    restored = {k: LifecycleState.from_json(v.to_json()) for k, v in states.items()}
    assert restored == states
    second = run(rule(), "x...", restored, start=2)
    assert summary(first + second) == [(0, None, "pending", False), (2, "pending", "firing", True),
                                      (4, "firing", "resolved", False)]


def test_score_above_for_a_duration() -> None:
    r = rule(condition={"kind": "score_above", "threshold": 1.0, "duration_s": 10})
    engine, states = Engine([r]), {}  # type: ignore[var-annotated]
    scores = [0.5, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0]  # 10 s = the third frame above
    out = [t for i, s in enumerate(scores) for t in engine.evaluate(result(i, False, score=s), states)]
    assert summary(out) == [(1, None, "pending", False), (3, "pending", "resolved", False),
                           (4, None, "pending", False), (6, "pending", "firing", True)]


def test_detections_in_window() -> None:
    r = rule(condition={"kind": "detections_in_window", "count": 3, "window_s": 20})  # 20 s = 4 frames
    ts = run(r, "x.x.x")
    assert summary(ts) == [(0, None, "pending", False), (4, "pending", "firing", True)]
    # spread too thin: the window never holds 3, and the pending alert ends once it is empty (frame 9)
    ts = run(r, "x...x.....")
    assert summary(ts) == [(0, None, "pending", False), (9, "pending", "resolved", False)]


def test_sensor_scoped_rule_keeps_one_lifecycle_per_sensor() -> None:
    r = rule(sensor="sensor_*", condition={"kind": "score_above", "threshold": 1.0, "duration_s": 0})
    engine, states = Engine([r]), {}  # type: ignore[var-annotated]
    out = engine.evaluate(result(0, False, errors=[2.0, 0.1, 3.0]), states)
    fired = sorted((t.sensor, t.to_state) for t in out)
    assert fired == [("sensor_0", "firing"), ("sensor_0", "pending"),
                     ("sensor_2", "firing"), ("sensor_2", "pending")]
    assert {t.key[1] for t in out} == {"SAT-001/A-1#sensor_0", "SAT-001/A-1#sensor_2"}


def test_scope_filters_streams_and_top_sensors_rank_by_error() -> None:
    r = rule(satellite="SAT-002", condition={"kind": "consecutive", "frames": 1})
    engine, states = Engine([r]), {}  # type: ignore[var-annotated]
    assert engine.evaluate(result(0, True), states) == []
    out = engine.evaluate(result(0, True, errors=[0.2, 0.9, 0.2, 0.5], stream=("SAT-002", "D-1")), states)
    assert [s.id for s in out[-1].top_sensors] == ["sensor_1", "sensor_3", "sensor_0"]
    assert [s.id for s in top_sensors({"sensor_0": 1.0, "sensor_1": 2.0}, 5)] == ["sensor_1", "sensor_0"]


def test_an_alert_names_every_detector_cause_since_it_opened() -> None:
    engine, states = Engine([rule()]), {}  # type: ignore[var-annotated]
    causes = [4, 4 | 8, 8]  # value_step at the start (sensors' errors may not show it), then value_quiet
    out = [t for i, c in enumerate(causes) for t in engine.evaluate(result(i, True, alarm_cause=c), states)]
    assert [(t.to_state, t.alarm_causes) for t in out] == [
        ("pending", ("value_step",)), ("firing", ("value_step", "value_quiet"))]
    [st] = states.values()
    assert LifecycleState.from_json(st.to_json()) == st
    # resolved, then a new alert starts from its own causes
    for i in range(3, 6):
        engine.evaluate(result(i, False), states)
    again = [t for i in range(6, 9) for t in engine.evaluate(result(i, True, alarm_cause=1), states)]
    assert again[-1].to_state == "firing" and again[-1].alarm_causes == ("error_above_threshold",)
    # a state stored before causes existed loads with none
    old = {k: v for k, v in st.to_json().items() if k != "causes"}
    assert LifecycleState.from_json(old).causes == 0


def test_top_sensors_are_the_peaks_since_the_alert_opened() -> None:
    # the frame that trips the detector (sensor_0 at 9.0) is two frames before the one that fires
    engine, states = Engine([rule()]), {}  # type: ignore[var-annotated]
    errors = [[9.0, 0.1, 0.2], [0.1, 0.5, 0.2], [0.1, 0.1, 0.7]]
    out = [t for i, e in enumerate(errors) for t in engine.evaluate(result(i, True, errors=e), states)]
    fired = out[-1]
    assert fired.to_state == "firing"
    assert [(s.id, s.error) for s in fired.top_sensors] == [
        ("sensor_0", 9.0), ("sensor_2", 0.7), ("sensor_1", 0.5)]
    # the peaks survive the round trip through the stored state, and a new alert starts from scratch
    [st] = states.values()
    assert LifecycleState.from_json(st.to_json()) == st
    for i in range(3, 6):
        engine.evaluate(result(i, False), states)
    again = [t for i in range(6, 9) for t in engine.evaluate(result(i, True, errors=[0.1, 0.3, 0.2]), states)]
    assert [s.id for s in again[-1].top_sensors] == ["sensor_1", "sensor_2", "sensor_0"]


def test_only_configured_channels_count_as_notified() -> None:
    r = rule(channels=["slack", "email"])
    for available, notify, message in (
        (frozenset(), False, "not notified: none of its channels is configured (slack, email)"),
        (frozenset({"email"}), True, "notified: email"),
        (None, True, "notified: slack, email"),
    ):
        engine, states = Engine([r], available), {}  # type: ignore[var-annotated]
        fired = [t for i in range(3) for t in engine.evaluate(result(i, True), states)][-1]
        assert (fired.to_state, fired.notify, fired.message) == ("firing", notify, message)


def test_a_frame_too_old_fires_but_does_not_notify() -> None:
    engine = Engine([rule()], notify_max_age_s=3600)
    fired = {}
    for now, label in ((T0 + timedelta(hours=2), "replay"), (T0 + 2 * STEP + timedelta(seconds=1), "live")):
        states: dict[LifecycleKey, LifecycleState] = {}
        fired[label] = [t for i in range(3) for t in engine.evaluate(result(i, True), states, now)][-1]
    assert (fired["replay"].to_state, fired["replay"].notify) == ("firing", False)
    assert "too old" in fired["replay"].message
    assert (fired["live"].to_state, fired["live"].notify) == ("firing", True)


def test_the_opening_frame_is_kept_as_the_alerts_evidence() -> None:
    engine = Engine([rule()])
    states: dict[LifecycleKey, LifecycleState] = {}
    frames = [result(0, False), result(1, True, errors=[0.2, 0.9, 0.4], detector_signal=2.5, alarm_cause=1),
              result(2, True, errors=[3.0, 0.1, 0.1], detector_signal=4.0), result(3, True)]
    ts = [t for f in frames for t in engine.evaluate(f, states)]
    assert [(t.index, t.to_state) for t in ts] == [(1, "pending"), (3, "firing")]
    for t in ts:  # both transitions carry the frame that opened the alert, not a later one
        e = t.evidence
        assert e is not None and (e.index, e.sensor, e.error, e.anomaly_score) == (1, "sensor_1", 0.9, 0.1)
        assert e.at == T0 + STEP and e.alarm_causes == ["error_above_threshold"]
        assert e.crossing is not None and (e.crossing.what, e.crossing.value, e.crossing.threshold) == (
            "detector_signal", 2.5, 1.0) and e.crossing.ratio == 2.5
    # it survives a restart (the state is persisted as JSON) and is dropped when the alert closes
    key = ("r", "SAT-001/A-1")
    assert LifecycleState.from_json(states[key].to_json()) == states[key]
    for i in range(4, 6):
        engine.evaluate(result(i, False), states)
    assert states[key].phase == "idle" and states[key].evidence is None


def test_a_score_rule_records_its_own_threshold_as_what_was_crossed() -> None:
    r = rule(condition={"kind": "score_above", "threshold": 0.5, "duration_s": 0}, sensor="sensor_2")
    [t, *_] = Engine([r]).evaluate(result(0, False, errors=[0.1, 0.2, 0.8]), {})
    assert t.evidence is not None and t.evidence.sensor == "sensor_2"
    assert t.evidence.crossing is not None and (t.evidence.crossing.what, t.evidence.crossing.value,
                                                t.evidence.crossing.threshold) == ("sensor_error", 0.8, 0.5)
