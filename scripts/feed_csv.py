#!/usr/bin/env python3
"""Feed one stream's CSV export into the system over HTTP (POST /api/smap/telemetry): the worked example of
docs/ingest.md, and a tool a ground segment can use as it is (standard library only).

The CSV has a header; one row is one frame. A `timestamp` column (RFC 3339, or Unix seconds) is optional
(default: now + row number x --interval-s); an `index` column is optional (default: --start-index + row
number); every other column is a sensor, in file order (sensor_0 first: the telemetry value, then the
command flags for a SMAP channel). Frames go in batches of --batch; a batch answered 503 is resent after
Retry-After (safe: a stream's frame index is applied once), a rejected frame is reported and skipped.

    python scripts/feed_csv.py a1.csv --satellite SAT-001 --entity A-1 --token "$SMAP_TOKEN"
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any


def timestamp(text: str) -> str:
    try:
        return datetime.fromtimestamp(float(text), UTC).isoformat()
    except ValueError:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            raise ValueError(f"timestamp {text!r} has no time zone") from None
        return parsed.isoformat()


def frames(path: str, satellite: str, entity: str, start_index: int, interval_s: float
           ) -> Iterator[dict[str, Any]]:
    t0 = datetime.now(UTC)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c not in ("timestamp", "index")]
        if not columns:
            raise SystemExit(f"{path}: no sensor columns")
        for row_no, row in enumerate(reader):
            yield {
                "satellite_id": satellite, "entity": entity,
                "timestamp": timestamp(row["timestamp"]) if row.get("timestamp") else
                (t0 + timedelta(seconds=row_no * interval_s)).isoformat(),
                "index": int(row["index"]) if row.get("index") else start_index + row_no,
                "sensors": {f"sensor_{i}": float(row[c]) for i, c in enumerate(columns)},
            }


def post(url: str, token: str, batch: list[dict[str, Any]]) -> tuple[int, dict[str, Any], float]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps({"frames": batch}).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), 0.0
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), float(exc.headers.get("Retry-After") or 5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--satellite", required=True)
    ap.add_argument("--entity", required=True)
    ap.add_argument("--url", default="http://localhost:8000")
    ap.add_argument("--token", default=os.environ.get("SMAP_TOKEN", ""), help="default: $SMAP_TOKEN")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--start-index", type=int, default=0)
    ap.add_argument("--interval-s", type=float, default=1.0)
    args = ap.parse_args()
    url = args.url.rstrip("/") + "/api/smap/telemetry"
    sent = rejected = 0
    batch: list[dict[str, Any]] = []
    todo = frames(args.csv, args.satellite, args.entity, args.start_index, args.interval_s)
    while True:
        batch = [f for _, f in zip(range(args.batch), todo, strict=False)]
        if not batch:
            break
        while True:
            status, body, retry_after = post(url, args.token, batch)
            if status != 503:
                break
            print(f"broker unavailable; resending in {retry_after:.0f} s", file=sys.stderr)
            time.sleep(retry_after)
        if status not in (200, 422):
            print(f"refused ({status}): {body.get('error')}", file=sys.stderr)
            return 1
        sent += body["accepted"]
        rejected += body["rejected"]
        for f in body["frames"]:
            if f["status"] == "rejected":
                print(f"frame {batch[f['position']]['index']} rejected: {f['reason']}", file=sys.stderr)
    print(f"{sent} frames accepted, {rejected} rejected")
    return 0 if rejected == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
