"""InferenceResult -> Prometheus text lines for VictoriaMetrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smap_shared.schemas import InferenceResult
from smap_shared.streaming.consumer import _float_texts, escape_label, result_lines, timestamp_ms


def _result(**overrides: Any) -> InferenceResult:
    fields: dict[str, Any] = {
        "stream_id": "SAT-001/A-1", "satellite_id": "SAT-001", "entity": "A-1", "model_name": "smap_A-1",
        "timestamp": datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=UTC), "index": 3,
        "sensor_values": {"sensor_0": 0.25, "sensor_1": 1.0},
        "reconstruction": {"sensor_0": 0.2, "sensor_1": 0.875},
        "sensor_error": {"sensor_0": 0.0025, "sensor_1": 1e-05},
        "anomaly_score": 12.5, "anomaly_detected": True, "threshold": 7.0, "inference_time_ms": 3.25,
        "detector_signal": 6.5, "alarm_cause": 4 | 8,
        "ground_truth_labels": {"sensor_0": 1, "sensor_1": 1},
    }
    fields.update(overrides)
    return InferenceResult(**fields)


def test_exact_lines() -> None:
    ts = 1795856400123  # 2026-11-28T09:00:00.123456Z in ms (truncated)
    a = 'satellite_id="SAT-001",entity="A-1"'
    lines = result_lines(_result())
    assert len(lines) == len(set(lines))
    assert sorted(lines) == sorted([
        f"smap_anomaly_score{{{a}}} 12.5 {ts}",
        f"smap_anomaly_detected{{{a}}} 1 {ts}",
        f"smap_inference_time_ms{{{a}}} 3.25 {ts}",
        f"smap_anomaly_threshold{{{a}}} 7.0 {ts}",
        f"smap_detector_signal{{{a}}} 6.5 {ts}",
        f'smap_alarm_cause{{{a},cause="error_above_threshold"}} 0 {ts}',
        f'smap_alarm_cause{{{a},cause="error_above_train_level"}} 0 {ts}',
        f'smap_alarm_cause{{{a},cause="value_step"}} 1 {ts}',
        f'smap_alarm_cause{{{a},cause="value_quiet"}} 1 {ts}',
        f"smap_ground_truth_anomaly{{{a}}} 1 {ts}",
        f'smap_sensor_value{{{a},sensor="sensor_0"}} 0.25 {ts}',
        f'smap_sensor_value{{{a},sensor="sensor_1"}} 1.0 {ts}',
        f'smap_sensor_reconstruction{{{a},sensor="sensor_0"}} 0.2 {ts}',
        f'smap_sensor_reconstruction{{{a},sensor="sensor_1"}} 0.875 {ts}',
        f'smap_sensor_error{{{a},sensor="sensor_0"}} 0.0025 {ts}',
        f'smap_sensor_error{{{a},sensor="sensor_1"}} 0.00001 {ts}',
        f'smap_sensor_ground_truth{{{a},sensor="sensor_0"}} 1 {ts}',
        f'smap_sensor_ground_truth{{{a},sensor="sensor_1"}} 1 {ts}',
    ])


def test_timestamp_ms_is_exact() -> None:
    assert timestamp_ms(datetime(1970, 1, 1, 0, 0, 1, 999999, tzinfo=UTC)) == 1999
    assert timestamp_ms(datetime(2026, 11, 28, 9, 0, tzinfo=UTC)) == 1795856400000


def test_ground_truth_is_the_max_and_optional() -> None:
    mixed = result_lines(_result(anomaly_detected=False, ground_truth_labels={"sensor_0": 0, "sensor_1": 1}))
    assert any(line.startswith("smap_ground_truth_anomaly{") and " 1 " in line for line in mixed)
    assert any(line.startswith("smap_anomaly_detected{") and " 0 " in line for line in mixed)
    without = result_lines(_result(ground_truth_labels={}))
    assert not [line for line in without if "ground_truth" in line]
    assert len(without) == 5 + 4 + 3 * 2


def test_alarm_causes_by_name() -> None:
    assert _result(alarm_cause=4 | 8).alarm_causes == ["value_step", "value_quiet"]
    assert _result(alarm_cause=0).alarm_causes == []
    assert _result().model_copy(update={"alarm_cause": 1}).alarm_causes == ["error_above_threshold"]


def test_detector_signal_only_when_known() -> None:
    for missing in (None, float("nan")):
        lines = result_lines(_result(detector_signal=missing))
        assert not [line for line in lines if line.startswith("smap_detector_signal")]


def test_sensors_in_numeric_order() -> None:
    keys = [f"sensor_{i}" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]
    values = {k: 0.0 for k in keys}
    lines = result_lines(_result(sensor_values=values, reconstruction=values, sensor_error=values,
                                 ground_truth_labels={}))
    value_lines = [line for line in lines if line.startswith("smap_sensor_value")]
    sensors = [line.split('sensor="')[1].split('"')[0] for line in value_lines]
    assert sensors == [f"sensor_{i}" for i in range(11)]


def test_label_escaping() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    line = result_lines(_result(stream_id='S"1\\x/A-1', satellite_id='S"1\\x'))[0]
    assert line.startswith('smap_anomaly_score{satellite_id="S\\"1\\\\x",entity="A-1"} ')


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=40))
def test_float_texts_round_trip_every_float64(values: list[float]) -> None:
    texts = _float_texts(values)
    assert len(texts) == len(values)
    assert [float(t).hex() for t in texts] == [v.hex() for v in values]  # exact, -0.0 included
    assert all(len(t) <= len(repr(v)) + 4 for t, v in zip(texts, values, strict=True))  # still short
