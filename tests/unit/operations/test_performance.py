"""Performance per entity (operations.performance): the evaluation's metrics over stored frames, summed per
entity, satellite and fleet, and the alarm precision from verdicts."""

from __future__ import annotations

import pytest

from smap_shared.evaluation.metrics import event_metrics, point_counts, runs
from smap_shared.operations.performance import frames_of, performance_body

STREAMS = [("SAT-001", "A-1"), ("SAT-002", "A-1"), ("SAT-002", "D-1")]


def samples(flags: str, t0: float = 1000.0, dt: float = 5.0) -> list[tuple[float, float | None]]:
    return [(t0 + i * dt, float(c == "x")) for i, c in enumerate(flags)]


DETECTED = {("SAT-001", "A-1"): samples("..xx....x."), ("SAT-002", "A-1"): samples("......xxx."),
            ("SAT-002", "D-1"): samples("x.........")}
TRUTH = {("SAT-001", "A-1"): samples(".xxx......"), ("SAT-002", "A-1"): samples(".xx......."),
         ("SAT-002", "D-1"): samples("..........")}


def test_counts_are_the_evaluations_summed_over_streams() -> None:
    body = performance_body(STREAMS, DETECTED, TRUTH, [])
    for key in STREAMS:
        _, pred, truth = frames_of(DETECTED[key], TRUTH[key])
        row = next(r for r in body["streams"] if (r["satellite_id"], r["entity"]) == key)
        assert row["event"] == event_metrics(pred, runs(truth)).counts.as_dict()
        assert row["point"] == point_counts(pred, truth).as_dict()
    a1 = body["entities"]["A-1"]
    # SAT-001: event found (delay 1 frame = 5 s) + one false run; SAT-002: event missed + one false run
    assert (a1["event"]["tp"], a1["event"]["fp"], a1["event"]["fn"]) == (1, 2, 1)
    assert a1["delay"] == {"detected": 1, "mean_frames": 1.0, "median_frames": 1.0, "mean_s": 5.0}
    assert body["satellites"]["SAT-002"]["event"]["fp"] == 2 and body["satellites"]["SAT-002"]["streams"] == 2
    assert body["fleet"]["event"]["fp"] == 3 and body["fleet"]["frames"] == 30
    # 3 false alarms over 3 streams x 45 s of data
    assert body["fleet"]["false_alarms_per_day"] == pytest.approx(3 / (135 / 86400))


def test_only_frames_with_both_series_count_and_unlabelled_streams_have_none() -> None:
    body = performance_body([("SAT-001", "A-1"), ("SAT-003", "P-1")], {("SAT-001", "A-1"): samples("..x")},
                            {("SAT-001", "A-1"): samples(".x", t0=1005.0)}, None)
    assert body["streams"][0]["frames"] == 2  # the frames at 1005 and 1010
    assert body["streams"][1]["frames"] == 0 and body["entities"]["P-1"]["false_alarms_per_day"] is None
    assert body["verdicts_source"] == "unavailable"


def test_alarm_precision_comes_from_the_latest_verdicts() -> None:
    alerts = [{"satellite_id": "SAT-001", "entity": "A-1", "verdict": v}
              for v in ("true_anomaly", "true_anomaly", "false_alarm", "rare_nominal_event", None)]
    alerts.append({"satellite_id": "SAT-009", "entity": "A-1", "verdict": "false_alarm"})  # not in the fleet
    v = performance_body(STREAMS, DETECTED, TRUTH, alerts)["entities"]["A-1"]["verdicts"]
    assert v == {"true_anomaly": 2, "false_alarm": 1, "rare_nominal_event": 1, "judged": 4, "alarm_precision": 0.5}
