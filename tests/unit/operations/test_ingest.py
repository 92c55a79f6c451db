"""The HTTP ingest's batch check (operations.ingest.check_batch): the trigger's validation per frame, the
batch's own shape refused whole."""

from __future__ import annotations

import json

import pytest

from smap_shared.fleet import default_fleet
from smap_shared.operations.ingest import MAX_INGEST_FRAMES, BatchError, check_batch
from smap_shared.streaming.validation import validate_telemetry

FLEET = default_fleet()
WIDTHS = {"A-1": 25, "D-1": 55}
FRAME = {"satellite_id": "SAT-001", "entity": "A-1", "timestamp": "2026-12-01T00:00:00Z", "index": 7,
         "sensors": {f"sensor_{i}": 0.25 for i in range(25)}}


def test_both_forms_and_the_trigger_verdict_per_frame() -> None:
    batch = [FRAME, {**FRAME, "index": -1}, {**FRAME, "satellite_id": "SAT-002"}, 3]
    for body in (json.dumps(batch), json.dumps({"frames": batch})):
        checks = check_batch(body.encode(), FLEET, WIDTHS, None)
        assert [c.position for c in checks] == [0, 1, 2, 3]
        for c, frame in zip(checks, batch, strict=True):
            # accepted exactly when the trigger accepts the same bytes
            assert (c.problem is None) == (not hasattr(validate_telemetry(json.dumps(frame).encode(), FLEET,
                                                                          WIDTHS), "kind"))
        assert [c.problem.kind if c.problem else None for c in checks] == [None, "schema", "unknown_stream",
                                                                             "schema"]
        assert checks[0].answer() == {"position": 0, "stream_id": "SAT-001/A-1", "status": "accepted"}
        assert checks[3].answer()["stream_id"] is None and "expected a JSON object" in checks[3].answer()["reason"]


@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "strict JSON"), (b'{"frames": [1], "more": 2}', "frames"), (b'"x"', "frames"), (b"[]", "no frames"),
    (b'[{"a": NaN}]', "strict JSON"), (json.dumps([FRAME] * (MAX_INGEST_FRAMES + 1)).encode(), "at most"),
])
def test_what_is_no_batch_is_refused_whole(body: bytes, fragment: str) -> None:
    with pytest.raises(BatchError, match=fragment):
        check_batch(body, FLEET, WIDTHS, None)
