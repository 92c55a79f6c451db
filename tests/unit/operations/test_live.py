"""The WebSocket hub with fake sockets: subscriptions, fan-out, and slow clients dropped, never waited for."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smap_shared.operations.live import (
    CLOSE_TOO_SLOW,
    Hub,
    LiveMessage,
    Subscription,
    decode,
    result_message,
)
from smap_shared.schemas import AlertEvent, InferenceResult

RESULTS = "smap-inference-results"


class FakeSocket:
    """Records what it is sent; `stall` makes every send hang like a client that stopped reading."""

    def __init__(self, stall: bool = False) -> None:
        self.sent: list[str] = []
        self.stall = stall
        self.closed: int | None = None

    async def send_str(self, data: str) -> None:
        if self.stall:
            await asyncio.Event().wait()
        self.sent.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = code
        return True


def msg(sat: str, entity: str, n: int = 0) -> LiveMessage:
    return LiveMessage(sat, entity, json.dumps({"n": n, "entity": entity}))


def test_subscription_matching() -> None:
    assert Subscription().matches("SAT-001", "A-1")
    assert Subscription("SAT-001").matches("SAT-001", "A-2")
    assert not Subscription("SAT-001").matches("SAT-002", "D-1")
    assert Subscription("SAT-001", "A-1").matches("SAT-001", "A-1")
    assert not Subscription("SAT-001", "A-1").matches("SAT-001", "A-2")
    assert Subscription(None, "A-1").matches("SAT-001", "A-1")
    assert Subscription.from_query({"satellite_id": "SAT-001", "entity": ""}) == Subscription("SAT-001", None)


def test_fan_out_follows_subscriptions() -> None:
    async def scenario() -> tuple[FakeSocket, FakeSocket, FakeSocket]:
        hub = Hub()
        every, sat1, a1 = FakeSocket(), FakeSocket(), FakeSocket()
        hub.add(every, Subscription())
        hub.add(sat1, Subscription("SAT-001"))
        hub.add(a1, Subscription("SAT-001", "A-1"))
        assert hub.publish(msg("SAT-001", "A-1", 1)) == 3
        assert hub.publish(msg("SAT-001", "A-2", 2)) == 2
        assert hub.publish(msg("SAT-002", "D-1", 3)) == 1
        await asyncio.sleep(0.05)
        await hub.close_all()
        return every, sat1, a1

    every, sat1, a1 = asyncio.run(scenario())
    assert [json.loads(s)["n"] for s in every.sent] == [1, 2, 3]
    assert [json.loads(s)["n"] for s in sat1.sent] == [1, 2]
    assert [json.loads(s)["n"] for s in a1.sent] == [1]


def test_a_stalled_client_is_dropped_and_the_others_keep_receiving() -> None:
    async def scenario() -> tuple[Hub, FakeSocket, FakeSocket, float]:
        hub = Hub(queue_max=8, send_timeout_s=30)
        slow, fast = FakeSocket(stall=True), FakeSocket()
        hub.add(slow, Subscription())
        hub.add(fast, Subscription())
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(50):
            hub.publish(msg("SAT-001", "A-1", i))  # never awaits: a stalled client cannot hold it up
            await asyncio.sleep(0.001)
        elapsed = loop.time() - started
        await asyncio.sleep(0.05)
        return hub, slow, fast, elapsed

    hub, slow, fast, elapsed = asyncio.run(scenario())
    assert elapsed < 1.0
    assert slow.closed == CLOSE_TOO_SLOW and slow.sent == []
    assert [json.loads(s)["n"] for s in fast.sent] == list(range(50))
    assert len(hub.clients) == 1


def test_a_send_that_times_out_drops_the_client() -> None:
    async def scenario() -> tuple[Hub, FakeSocket]:
        hub = Hub(queue_max=100, send_timeout_s=0.05)
        slow = FakeSocket(stall=True)
        hub.add(slow, Subscription())
        hub.publish(msg("SAT-001", "A-1"))
        await asyncio.sleep(0.3)
        return hub, slow

    hub, slow = asyncio.run(scenario())
    assert slow.closed == CLOSE_TOO_SLOW
    assert hub.clients == set()


def _result(**over: object) -> InferenceResult:
    base: dict[str, object] = dict(
        stream_id="SAT-001/A-1", satellite_id="SAT-001", entity="A-1", model_name="smap_A-1",
        timestamp=datetime(2026, 11, 28, 9, 0, tzinfo=UTC), index=7,
        sensor_values={"sensor_0": 0.5, "sensor_1": 0.0, "sensor_10": 1.0, "sensor_2": 0.0,
                       **{f"sensor_{i}": 0.0 for i in range(3, 10)}},
        reconstruction={f"sensor_{i}": 0.25 for i in range(11)},
        sensor_error={f"sensor_{i}": float(i) for i in range(11)},
        anomaly_score=3.5, anomaly_detected=True, threshold=1.25, inference_time_ms=2.0,
        ground_truth_labels={f"sensor_{i}": int(i == 0) for i in range(11)},
    )
    base.update(over)
    return InferenceResult.model_validate(base)


def test_result_message_has_the_spec_fields_in_sensor_order() -> None:
    m = result_message(_result())
    assert m["type"] == "smap_inference"
    assert (m["satellite_id"], m["entity"], m["timestamp"]) == ("SAT-001", "A-1", "2026-11-28T09:00:00.000000Z")
    assert (m["anomaly_score"], m["anomaly_detected"], m["threshold"], m["ground_truth"]) == (3.5, True, 1.25, 1)
    assert [s["id"] for s in m["sensors"]] == [f"sensor_{i}" for i in range(11)]
    assert m["sensors"][0] == {"id": "sensor_0", "value": 0.5, "reconstruction": 0.25, "error": 0.0,
                               "ground_truth": 1}
    assert m["sensors"][10]["error"] == 10.0
    assert result_message(_result(ground_truth_labels={}))["ground_truth"] is None
    assert m["alarm_causes"] == []
    assert result_message(_result(alarm_cause=2 | 4))["alarm_causes"] == ["error_above_train_level", "value_step"]


def test_decode_results_alerts_and_garbage() -> None:
    raw = _result().model_dump_json().encode()
    live = decode(RESULTS, raw, RESULTS)
    assert live is not None and (live.satellite_id, live.entity) == ("SAT-001", "A-1")
    assert json.loads(live.text)["type"] == "smap_inference"
    alert = AlertEvent(event="firing", alert_id=4, rule="score_high", severity="critical", state="firing",
                       satellite_id="SAT-002", entity="D-1", stream_id="SAT-002/D-1", score=9.0,
                       started_at=datetime(2026, 11, 28, tzinfo=UTC), at=datetime(2026, 11, 28, tzinfo=UTC))
    live = decode("smap-alerts", alert.model_dump_json().encode(), RESULTS)
    assert live is not None and (live.satellite_id, live.entity) == ("SAT-002", "D-1")
    assert json.loads(live.text)["type"] == "smap_alert"
    assert decode(RESULTS, b"not json", RESULTS) is None
    assert decode("smap-alerts", b'{"type": "smap_alert"}', RESULTS) is None


@pytest.mark.parametrize("bad", [{"stream_id": "SAT-001/A-2"}])
def test_decode_rejects_inconsistent_results(bad: dict[str, object]) -> None:
    raw = _result(**bad).model_dump_json().encode()
    assert decode(RESULTS, raw, RESULTS) is None


IDS = st.sampled_from(["SAT-001", "SAT-002", "SAT-1/x", "A-1", "A-2", "x/A-1", ""])
SUBS = st.builds(Subscription, st.none() | IDS, st.none() | IDS)


@settings(max_examples=300, deadline=None)
@given(subs=st.lists(SUBS, max_size=4), sat=IDS, entity=IDS)
def test_wants_never_skips_a_record_a_client_would_take(subs: list[Subscription], sat: str, entity: str) -> None:
    """The feed skips records by key before decoding them: that may never hide one from a subscriber (ids
    with a '/' in them included), and with nobody subscribed nothing is decoded."""

    async def scenario() -> tuple[bool, int]:
        hub = Hub()
        for sub in subs:
            hub.add(FakeSocket(), sub)
        wanted = hub.wants(f"{sat}/{entity}")
        taken = hub.publish(msg(sat, entity))
        await hub.close_all()
        return wanted, taken

    wanted, taken = asyncio.run(scenario())
    assert wanted or taken == 0
    if not subs:
        assert not wanted


def test_wants_only_the_watched_streams() -> None:
    async def scenario() -> list[bool]:
        hub = Hub()
        hub.add(FakeSocket(), Subscription("SAT-001", "A-1"))
        out = [hub.wants(k) for k in ("SAT-001/A-1", "SAT-001/A-2", "SAT-002/A-1", None)]
        await hub.close_all()
        return out

    assert asyncio.run(scenario()) == [True, False, False, True]
