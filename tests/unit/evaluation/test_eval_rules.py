"""Decision rules: causal, stateful, serialisable; a stream and the offline run agree."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from smap_shared.model.rules import (
    CAUSE_ERROR,
    CAUSE_TRAIN_LEVEL,
    CAUSE_VALUE_QUIET,
    CAUSE_VALUE_STEP,
    CausalNdtRule,
    FixedRule,
    RuleStream,
    TrainPotRule,
    cause_names,
    rule_from_dict,
)

Array = npt.NDArray[np.float64]


def streamed(rule: CausalNdtRule, scores: Array, errors: Array, raw: Array | None = None) -> list[bool]:
    """`anomaly_detected` of a stream fed the sequence one step at a time (as Scorer and Triton run it)."""
    stream = RuleStream(rule)
    return [stream.update(float(scores[t]), errors[t], None if raw is None else raw[t])[0]
            for t in range(len(scores))]


def synthetic(n: int, seed: int, bursts: tuple[tuple[int, int], ...] = ()) -> tuple[Array, Array]:
    """Scores (n,) and per-sensor squared errors (n, 3): small noise plus bursts on column 0."""
    rng = np.random.default_rng(seed)
    err = (0.02 + 0.01 * rng.standard_normal((n, 3))) ** 2
    for a, b in bursts:
        err[a:b, 0] = 0.5**2
    return err.mean(axis=1), err


SMALL = CausalNdtRule(window=300, stride=20, buffer=10, hold=5, warmup=0)


def test_fixed_rule_is_the_spec_threshold() -> None:
    scores = np.array([0.1, 0.16, 0.17])
    out = FixedRule().run(scores, np.zeros((3, 2)))
    assert out.detected.tolist() == [False, False, True]
    assert np.all(out.threshold == 0.16)


def test_train_pot_rule_fits_on_train_scores_only() -> None:
    train, _ = synthetic(2000, 0)
    rule = TrainPotRule().fit(train, np.zeros((2000, 3)))
    assert rule.threshold >= train.max()  # never flags its own train data
    again = rule_from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again == rule


def test_ndt_flags_a_burst_and_not_the_noise() -> None:
    tr_s, tr_e = synthetic(1000, 1)
    te_s, te_e = synthetic(1500, 2, bursts=((800, 900),))
    rule = SMALL.fit(tr_s, tr_e)
    out = rule.run(te_s, te_e)
    assert out.detected[800:900].any()
    assert not out.detected[:800].any()
    # the alarm ends `hold` steps after the smoothed error falls back under the threshold
    assert not out.detected[1100:].any()


def test_ndt_is_causal_future_rows_do_not_change_past_decisions() -> None:
    tr_s, tr_e = synthetic(1000, 3)
    te_s, te_e = synthetic(1200, 4, bursts=((500, 560),))
    rule = SMALL.fit(tr_s, tr_e)
    full = rule.run(te_s, te_e)
    changed_e = te_e.copy()
    changed_e[900:, 0] = 4.0  # a huge change later on
    other = rule.run(te_s, changed_e)
    assert np.array_equal(full.detected[:900], other.detected[:900])
    assert np.array_equal(full.threshold[:900], other.threshold[:900])


def test_stream_matches_run_and_state_survives_a_json_round_trip() -> None:
    tr_s, tr_e = synthetic(800, 5)
    te_s, te_e = synthetic(1000, 6, bursts=((300, 340), (700, 720)))
    rule = CausalNdtRule(window=250, stride=25, buffer=10, hold=8, warmup=50, cap_flagged=True,
                         or_margin=3.0).fit(tr_s, tr_e)
    offline = rule.run(te_s, te_e)
    # a stream that is persisted (rule as JSON, state as a list) and restored halfway through
    stream = RuleStream(rule)
    got = [stream.update(float(te_s[t]), te_e[t]) for t in range(500)]
    saved_rule = json.dumps(rule.to_dict())
    saved_state = json.dumps(stream.state.tolist())
    restored = RuleStream(rule_from_dict(json.loads(saved_rule)), np.array(json.loads(saved_state)))
    got += [restored.update(float(te_s[t]), te_e[t]) for t in range(500, 1000)]
    assert [d for d, _ in got] == offline.detected.tolist()
    assert np.allclose([t for _, t in got], offline.threshold, rtol=0, atol=0)
    assert offline.detected[300:340].any() and offline.detected[700:720].any()


def test_warmup_silences_the_first_steps() -> None:
    tr_s, tr_e = synthetic(800, 7)
    te_s, te_e = synthetic(600, 8, bursts=((0, 40), (400, 440)))
    loud = CausalNdtRule(window=250, stride=25, buffer=10, hold=0, warmup=0).fit(tr_s, tr_e).run(te_s, te_e)
    quiet = CausalNdtRule(window=250, stride=25, buffer=10, hold=0, warmup=100).fit(tr_s, tr_e).run(te_s, te_e)
    assert loud.detected[:40].any()
    assert not quiet.detected[:100].any()
    assert quiet.detected[400:440].any()


def test_or_margin_keeps_alarming_on_a_level_never_seen_in_training() -> None:
    tr_s, tr_e = synthetic(800, 9)
    te_s, te_e = synthetic(2000, 10, bursts=((500, 2000),))  # the error jumps and stays up
    relative = CausalNdtRule(window=300, stride=20, buffer=10, hold=0, warmup=0).fit(tr_s, tr_e)
    hybrid = CausalNdtRule(window=300, stride=20, buffer=10, hold=0, warmup=0, or_margin=2.0).fit(tr_s, tr_e)
    r, h = relative.run(te_s, te_e), hybrid.run(te_s, te_e)
    assert r.detected[500:600].any()
    assert not r.detected[1500:].any()  # the relative threshold adapted to the new level
    assert h.detected[600:].all()  # 2x the train maximum: alarms for as long as it lasts
    assert hybrid.train_max == pytest.approx(float(relative.smoothed(tr_s, tr_e).max()))


def test_score_column_and_from_dict_validation() -> None:
    tr_s, tr_e = synthetic(500, 11)
    rule = CausalNdtRule(column=-1, window=200, stride=10, buffer=5, warmup=0).fit(tr_s, tr_e)
    assert rule.signal_of(0.25, np.zeros(3)) == 0.5
    assert len(rule.initial) == 200
    assert math.isfinite(rule.train_max)
    with pytest.raises(ValueError, match="unknown parameters"):
        rule_from_dict({"kind": "causal_ndt", "bogus": 1})
    st = rule.initial_state()
    assert st.dtype == np.float64 and st.ndim == 1


def test_persist_waits_for_consecutive_exceedances() -> None:
    tr_s, tr_e = synthetic(1000, 12)
    # a 20-step excursion and a 200-step anomaly of the same height
    te_s, te_e = synthetic(2500, 13, bursts=((800, 820), (1500, 1700)))
    base = CausalNdtRule(window=300, stride=20, buffer=10, hold=0, warmup=0)
    eager = base.fit(tr_s, tr_e).run(te_s, te_e)
    patient = replace(base, persist=40).fit(tr_s, tr_e).run(te_s, te_e)
    assert eager.detected[800:830].any() and eager.detected[1500:1700].any()
    assert not patient.detected[:1500].any()  # the brief excursion never lasted 40 steps
    first = int(np.flatnonzero(patient.detected)[0])
    assert first == int(np.flatnonzero(eager.detected[1500:])[0]) + 1500 + 39  # the 40th exceedance in a row
    np.testing.assert_array_equal(eager.threshold, patient.threshold)  # persistence changes no threshold


def test_step_alarm_fires_on_a_value_jump_larger_than_any_in_training() -> None:
    n = 600
    tr_s, tr_e = synthetic(n, 14)
    te_s, te_e = synthetic(n, 15)
    train_raw = np.zeros((n, 3))
    train_raw[:, 0] = np.where(np.arange(n) % 50 < 25, 0.0, 0.5)  # steps of 0.5 are normal
    test_raw = np.zeros((n, 3))
    test_raw[:, 0] = np.where(np.arange(n) % 50 < 25, 0.0, 0.5)
    test_raw[400:, 0] = 1.3  # a jump of 0.8 (> 1.5 x 0.5) at 400 (the model's error did not move)
    rule = CausalNdtRule(window=200, stride=10, buffer=5, hold=3, warmup=0, step_factor=1.5).fit(
        tr_s, tr_e, train_raw)
    assert rule.train_max_step == 0.5
    out = rule.run(te_s, te_e, raw=test_raw)
    assert np.flatnonzero(out.detected).tolist() == [400, 401, 402, 403]  # fired at the jump, held 3 steps
    assert out.cause[out.detected].tolist() == [CAUSE_VALUE_STEP] * 4 and not out.cause[~out.detected].any()
    without = rule.run(te_s, te_e)  # no raw rows: no step alarm
    assert not without.detected.any()
    assert streamed(rule, te_s, te_e, test_raw) == out.detected.tolist()  # a stream agrees with the run
    with pytest.raises(ValueError, match="raw rows"):
        CausalNdtRule(step_factor=1.5).fit(tr_s, tr_e)


def test_a_constant_train_value_makes_any_step_news() -> None:
    tr_s, tr_e = synthetic(300, 16)
    te_s, te_e = synthetic(300, 17)
    raw = np.ones((300, 2))
    rule = CausalNdtRule(window=100, stride=10, buffer=5, hold=0, warmup=0, step_factor=1.5).fit(tr_s, tr_e, raw)
    assert rule.train_max_step == 0.0
    test_raw = np.ones((300, 2))
    test_raw[200, 0] = 0.999
    assert np.flatnonzero(rule.run(te_s, te_e, raw=test_raw).detected).tolist() == [200, 201]


def oscillating(n: int) -> tuple[Array, Array, Array, Array, Array]:
    """Train and test errors, and a train value oscillating with amplitude 1 or 1.5 (its std is never ~0)."""
    tr_s, tr_e = synthetic(n, 18)
    te_s, te_e = synthetic(n, 19)
    t = np.arange(n)
    train_raw = np.zeros((n, 2))
    train_raw[:, 0] = np.sin(t / 3.0) * (1.0 + 0.5 * (t % 200 < 100))
    return tr_s, tr_e, te_s, te_e, train_raw


def test_quiet_alarm_fires_when_the_value_goes_flatter_than_in_training() -> None:
    tr_s, tr_e, te_s, te_e, train_raw = oscillating(600)
    test_raw = train_raw.copy()
    test_raw[300:420, 0] = 0.2  # stuck for 120 steps: the model's error did not move
    rule = CausalNdtRule(window=200, stride=10, buffer=5, hold=3, warmup=0, quiet_window=20,
                         quiet_pad=0.25).fit(tr_s, tr_e, train_raw)
    assert 0.0 < rule.train_quiet_min < rule.train_quiet_max
    assert rule.quiet_level == pytest.approx(
        rule.train_quiet_min - 0.25 * (rule.train_quiet_max - rule.train_quiet_min))
    out = rule.run(te_s, te_e, raw=test_raw)
    flagged = np.flatnonzero(out.detected)
    # fires once on entering the quiet spell (within the window after it starts), holds 3 steps, and does
    # not fire again while the value stays flat nor on the train-like signal
    assert flagged.size == 4 and 300 < flagged[0] < 320
    assert flagged.tolist() == list(range(flagged[0], flagged[0] + 4))
    assert set(out.cause[flagged].tolist()) == {CAUSE_VALUE_QUIET} and not out.cause[~out.detected].any()
    assert not rule.run(te_s, te_e, raw=train_raw).detected.any()
    assert not rule.run(te_s, te_e).detected.any()  # no raw rows: no quiet alarm
    assert streamed(rule, te_s, te_e, test_raw) == out.detected.tolist()
    with pytest.raises(ValueError, match="raw rows"):
        CausalNdtRule(quiet_window=20).fit(tr_s, tr_e)


def test_the_quiet_deadband_makes_a_value_hovering_about_the_level_one_alarm() -> None:
    tr_s, tr_e, te_s, te_e, train_raw = oscillating(900)
    t = np.arange(900)
    base = CausalNdtRule(window=200, stride=10, buffer=5, hold=3, warmup=0, quiet_window=20, quiet_pad=0.25)
    rule = base.fit(tr_s, tr_e, train_raw)
    level, floor = rule.quiet_level, rule.train_quiet_min
    # the test value's amplitude hovers between just under the level and half way to the train minimum:
    # std ~ sd(amplitude) ~ amplitude / sqrt(2) for a sine
    test_raw = train_raw.copy()
    amp = np.where((t // 40) % 2 == 0, 0.8 * level, 0.5 * (level + floor)) * np.sqrt(2.0)
    test_raw[300:700, 0] = np.sin(t[300:700] / 3.0) * amp[300:700]
    plain = rule.run(te_s, te_e, raw=test_raw)
    banded = replace(base, quiet_deadband=True).fit(tr_s, tr_e, train_raw).run(te_s, te_e, raw=test_raw)

    def alarms(detected: npt.NDArray[np.bool_]) -> int:
        return int(np.sum(np.diff(np.concatenate(([0], detected.astype(int)))) == 1))

    assert alarms(plain.detected) >= 4  # a new alarm at every dip under the level
    assert alarms(banded.detected) == 1  # one spell: it ends only back at the train minimum
    assert 300 < int(np.argmax(banded.detected)) < 330
    assert not replace(base, quiet_deadband=True).fit(tr_s, tr_e, train_raw).run(
        te_s, te_e, raw=train_raw).detected.any()  # training-like values stay quiet-alarm free


def test_quiet_alarm_is_off_where_training_was_already_flat() -> None:
    tr_s, tr_e = synthetic(300, 20)
    te_s, te_e = synthetic(300, 21)
    train_raw = np.zeros((300, 2))
    train_raw[::40, 0] = 1.0  # mostly flat: its lowest rolling std is 0, nothing can be quieter
    rule = CausalNdtRule(window=100, stride=10, buffer=5, hold=0, warmup=0, quiet_window=20).fit(
        tr_s, tr_e, train_raw)
    assert rule.train_quiet_min == 0.0
    assert not rule.run(te_s, te_e, raw=np.zeros((300, 2))).detected.any()


def test_a_flat_train_value_at_rounding_noise_keeps_the_quiet_alarm_off() -> None:
    tr_s, tr_e = synthetic(300, 22)
    te_s, te_e = synthetic(300, 23)
    train_raw = np.full((300, 2), 0.1)  # 0.1 is not exact in binary: its rolling std is ~1e-17, not 0
    assert float(np.std(np.full(50, 0.1))) > 0.0
    rule = CausalNdtRule(window=100, stride=10, buffer=5, hold=0, warmup=0, quiet_window=50).fit(
        tr_s, tr_e, train_raw)
    test_raw = np.full((300, 2), 0.5)  # flat too (std exactly 0 here): normal for this channel
    assert not rule.run(te_s, te_e, raw=test_raw).detected.any()
    assert rule.train_quiet_min == 0.0 and rule.train_quiet_max == 0.0


def _wavy(n: int, seed: int) -> Array:
    """A raw value like a telemetry channel: an oscillation with level changes and noise (2 columns)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    raw = np.zeros((n, 2))
    raw[:, 0] = np.sin(t / 5.0) + 0.5 * (t % 300 < 150) + 0.05 * rng.standard_normal(n)
    return raw


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.0), (2.0, 0.0), (3.0, -0.7), (0.01, 40.0)])
def test_scale_free_raw_alarms_ignore_the_units_of_the_value(a: float, b: float) -> None:
    """telemanom scaled each split by its own min/max and a live feed is not rescaled: with `scale_window`
    the step and quiet alarms give the same alarms whatever the units of the train or the test value,
    where the unit-bound form (train_max_step in train units) fires on steps of another scale."""
    n = 1500
    tr_s, tr_e = synthetic(n, 30)
    te_s, te_e = synthetic(n, 31)
    train_raw, test_raw = _wavy(n, 32), _wavy(n, 33)
    test_raw[600, 0] += 6.0  # a spike, far beyond any step of training
    test_raw[1000:1200, 0] = test_raw[1000, 0]  # stuck: quieter than ever in training
    sf = CausalNdtRule(window=200, stride=10, buffer=5, hold=10, warmup=100, step_factor=1.5,
                       quiet_window=50, quiet_pad=0.25, scale_window=300)
    fitted = sf.fit(tr_s, tr_e, train_raw)
    assert 0.0 < fitted.train_max_step < math.inf and 0.0 < fitted.train_quiet_min < fitted.train_quiet_max
    out = fitted.run(te_s, te_e, raw=test_raw)
    assert out.detected[600] and out.cause[600] & CAUSE_VALUE_STEP and not out.detected[590:600].any()
    assert out.detected[1000:1050].any() and CAUSE_VALUE_QUIET in out.cause[1000:1060].tolist()
    assert not out.detected[200:590].any()  # the train-like stretch is quiet
    moved_test, moved_train = test_raw.copy(), train_raw.copy()
    moved_test[:, 0] = a * test_raw[:, 0] + b
    moved_train[:, 0] = 1.7 * train_raw[:, 0] - 0.2  # the train split in yet other units
    for f in (fitted, sf.fit(tr_s, tr_e, moved_train)):
        again = f.run(te_s, te_e, raw=moved_test)
        np.testing.assert_array_equal(again.detected, out.detected)
        np.testing.assert_array_equal(again.cause, out.cause)
    assert streamed(fitted, te_s, te_e, moved_test) == out.detected.tolist()  # a stream agrees with the run
    unit = replace(sf, scale_window=0).fit(tr_s, tr_e, train_raw)
    base = unit.run(te_s, te_e, raw=test_raw).detected
    assert not np.array_equal(unit.run(te_s, te_e, raw=moved_test).detected, base)  # units matter there


def test_scale_free_step_alarm_is_off_where_training_stepped_out_of_a_flat_stretch() -> None:
    n = 600
    tr_s, tr_e = synthetic(n, 34)
    te_s, te_e = synthetic(n, 35)
    train_raw = np.zeros((n, 2))
    train_raw[400:, 0] = 1.0  # flat, then a step: its ratio to the flat range before it is infinite
    rule = CausalNdtRule(window=100, stride=10, buffer=5, hold=0, warmup=0, step_factor=1.5,
                         scale_window=100).fit(tr_s, tr_e, train_raw)
    assert rule.train_max_step == -1.0  # nothing can be larger: off
    test_raw = np.zeros((n, 2))
    test_raw[300:, 0] = 5.0
    assert not rule.run(te_s, te_e, raw=test_raw).detected.any()


def test_an_alarm_reports_every_cause_that_fired_since_it_began() -> None:
    n = 400
    tr_s, tr_e = synthetic(n, 24)
    te_s, te_e = synthetic(n, 25)
    t = np.arange(n)
    train_raw = np.zeros((n, 2))
    train_raw[:, 0] = np.sin(t / 3.0)  # steps up to ~0.33, rolling std never near 0
    test_raw = train_raw.copy()
    test_raw[200:, 0] = 3.0  # a jump (step alarm at 200), then flat (quiet alarm ~20 steps later)
    rule = CausalNdtRule(window=100, stride=10, buffer=5, hold=30, warmup=0, step_factor=1.5,
                         quiet_window=20).fit(tr_s, tr_e, train_raw)
    out = rule.run(te_s, te_e, raw=test_raw)
    on = np.flatnonzero(out.detected)
    assert on[0] == 200 and out.cause[200] == CAUSE_VALUE_STEP
    assert out.cause[on[-1]] == CAUSE_VALUE_STEP | CAUSE_VALUE_QUIET  # the quiet alarm joined the held one
    assert cause_names(int(out.cause[on[-1]])) == ["value_step", "value_quiet"]
    assert not out.cause[~out.detected].any()
    # a stream reports the same causes step by step (Scorer and Triton read them this way)
    stream = RuleStream(rule)
    got = []
    for i in range(n):
        detected, _ = stream.update(float(te_s[i]), te_e[i], test_raw[i])
        got.append(rule.cause(stream.state, detected))
    assert got == out.cause.tolist()


def test_score_rules_report_the_error_cause() -> None:
    s = np.array([0.1, 0.5, 0.2])
    run = FixedRule(threshold=0.3).run(s, np.zeros((3, 1)))
    assert run.cause.tolist() == [0, CAUSE_ERROR, 0]
    step = [FixedRule(threshold=0.3).cause(np.zeros(0), bool(x > 0.3)) for x in s]
    assert step == run.cause.tolist()


def test_latch_keeps_an_alarm_up_while_the_signal_stays_above_the_threshold_it_began_at() -> None:
    n = 500
    tr_s, tr_e = synthetic(n, 26)
    te_s, te_e = synthetic(n, 27)
    # unsmoothed signal, relative alarm off (persist never reached): only the train-level alarm fires
    base = CausalNdtRule(alpha=1.0, window=200, stride=10, buffer=5, hold=3, warmup=0, or_margin=2.0,
                         persist=10**6).fit(tr_s, tr_e)
    level = 2.0 * base.train_max
    spike = te_e.copy()
    spike[300, 0] = (5 * level) ** 2  # one frame far above any train level: fires at 300
    began_at = float(base.run(te_s, spike).threshold[300])
    assert began_at < level
    plateau = spike.copy()
    plateau[301:360, 0] = ((began_at + level) / 2) ** 2  # above the start threshold, below the train level
    plain = base.run(te_s, plateau)
    assert np.flatnonzero(plain.detected).tolist() == [300, 301, 302, 303]  # the hold alone ends it early
    latched = replace(base, latch=1.0).run(te_s, plateau)
    assert np.flatnonzero(latched.detected).tolist() == list(range(300, 360))
    assert set(latched.cause[300:360].tolist()) == {CAUSE_TRAIN_LEVEL} and not latched.cause[360:].any()
    assert streamed(replace(base, latch=1.0), te_s, plateau) == latched.detected.tolist()  # step by step


def test_older_rule_dicts_behave_as_before() -> None:
    tr_s, tr_e = synthetic(1000, 1)
    te_s, te_e = synthetic(1500, 2, bursts=((800, 900),))
    fitted = SMALL.fit(tr_s, tr_e)
    old = {k: v for k, v in fitted.to_dict().items() if k not in (
        "persist", "step_factor", "train_max_step", "quiet_window", "quiet_pad", "train_quiet_min",
        "train_quiet_max", "latch", "scale_window")}
    again = rule_from_dict(json.loads(json.dumps(old)))
    assert again == fitted
    np.testing.assert_array_equal(again.run(te_s, te_e).detected, fitted.run(te_s, te_e).detected)
