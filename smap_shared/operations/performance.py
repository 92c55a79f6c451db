"""Performance per entity and satellite (the spec's "next step 4"): how well what the chain stored --
`smap_anomaly_detected` against `smap_ground_truth_anomaly`, frame by frame -- matches the labels, with the
offline evaluation's own functions (smap_shared.evaluation.metrics), so the numbers equal the evaluation's on
the same frames: event level (telemanom's definition), point-wise without point-adjust, detection delay (in
frames and seconds), false alarms per day of data; plus, where operators judged alerts, the alarm precision
from their verdicts.

A stream's frames are its stored samples in timestamp order; only frames that carry both series count (a
stream fed without labels has no ground truth and is listed without metrics). Segments are the runs of the
stored labels, clipped to the range like the evaluation clips them to the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smap_shared.evaluation.metrics import Counts, event_metrics, point_counts, runs, sum_counts

DAY_S = 86_400.0
VERDICT_KINDS = ("true_anomaly", "false_alarm", "rare_nominal_event")


@dataclass(frozen=True)
class StreamPerformance:
    """One stream's counts over its frames in the range (`frames` 0: no labelled frame stored)."""

    frames: int
    event: Counts
    point: Counts
    delays_frames: tuple[int, ...]  # detected segments only
    delays_s: tuple[float, ...]
    span_s: float  # first to last frame
    segments: int

    @staticmethod
    def of(stamps: Sequence[float], detected: Sequence[bool], truth: Sequence[bool]) -> StreamPerformance:
        """
        >>> p = StreamPerformance.of([0, 1, 2, 3, 4, 5], [0, 0, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0])
        >>> (p.event.tp, p.event.fp, p.event.fn, p.point.tp, p.point.fp, p.delays_frames, p.delays_s)
        (1, 1, 0, 1, 1, (1,), (1.0,))
        """
        pred, lab = np.asarray(detected, dtype=bool), np.asarray(truth, dtype=bool)
        segs = runs(lab)
        ev = event_metrics(pred, segs)
        frames_delay = tuple(d for d in ev.delays if d is not None)
        seconds = tuple(float(stamps[a + d] - stamps[a]) for (a, _), d in zip(segs, ev.delays, strict=True)
                        if d is not None)
        span = float(stamps[-1] - stamps[0]) if len(stamps) else 0.0
        return StreamPerformance(len(stamps), ev.counts, point_counts(pred, lab), frames_delay, seconds, span,
                                 len(segs))


@dataclass
class Tally:
    """Counts summed over streams (an entity across satellites, a satellite, the fleet)."""

    streams: list[StreamPerformance] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICT_KINDS, 0))

    def as_dict(self) -> dict[str, Any]:
        scored = [s for s in self.streams if s.frames]
        event, point = sum_counts(s.event for s in scored), sum_counts(s.point for s in scored)
        frames_delay = [d for s in scored for d in s.delays_frames]
        seconds_delay = [d for s in scored for d in s.delays_s]
        days = sum(s.span_s for s in scored) / DAY_S
        judged = self.verdicts["true_anomaly"] + self.verdicts["false_alarm"] + self.verdicts["rare_nominal_event"]
        return {
            "streams": len(self.streams), "frames": sum(s.frames for s in scored),
            "segments": sum(s.segments for s in scored),
            "event": event.as_dict(), "point": point.as_dict(),
            "delay": {"detected": len(frames_delay),
                      "mean_frames": float(np.mean(frames_delay)) if frames_delay else None,
                      "median_frames": float(np.median(frames_delay)) if frames_delay else None,
                      "mean_s": float(np.mean(seconds_delay)) if seconds_delay else None},
            "false_alarms_per_day": event.fp / days if days > 0 else None,
            "verdicts": {**self.verdicts, "judged": judged,
                         # an alarm operators confirmed, over every alarm they judged
                         "alarm_precision": self.verdicts["true_anomaly"] / judged if judged else None},
        }


def frames_of(detected: Iterable[tuple[float, float | None]], truth: Iterable[tuple[float, float | None]]
              ) -> tuple[list[float], list[bool], list[bool]]:
    """The frames that carry both series, in time order: (timestamps, detected, truth).

    >>> frames_of([(1, 0.0), (2, 1.0), (3, 1.0)], [(2, 1.0), (3, 0.0), (4, 1.0)])
    ([2, 3], [True, True], [True, False])
    """
    t = {ts: v for ts, v in truth if v is not None}
    both = sorted((ts, bool(v), bool(t[ts])) for ts, v in detected if v is not None and ts in t)
    return [b[0] for b in both], [b[1] for b in both], [b[2] for b in both]


def performance_body(streams: Sequence[tuple[str, str]], detected: Mapping[tuple[str, str], list[tuple[float,
                     float | None]]], truth: Mapping[tuple[str, str], list[tuple[float, float | None]]],
                     alerts: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Per entity, per satellite and for the fleet, from each stream's stored samples and the judged alerts
    (None: the alert manager could not be asked)."""
    by_entity: dict[str, Tally] = {}
    by_satellite: dict[str, Tally] = {}
    fleet = Tally()
    per_stream = []
    for sat, entity in streams:
        stamps, pred, lab = frames_of(detected.get((sat, entity), []), truth.get((sat, entity), []))
        perf = StreamPerformance.of(stamps, pred, lab)
        for tally in (by_entity.setdefault(entity, Tally()), by_satellite.setdefault(sat, Tally()), fleet):
            tally.streams.append(perf)
        per_stream.append({"satellite_id": sat, "entity": entity, **Tally([perf]).as_dict()})
    known = set(streams)
    for a in alerts or []:
        key = (a["satellite_id"], a["entity"])
        if a.get("verdict") in VERDICT_KINDS and key in known:
            for tally in (by_entity[key[1]], by_satellite[key[0]], fleet):
                tally.verdicts[a["verdict"]] += 1
    return {
        "fleet": fleet.as_dict(),
        "entities": {e: t.as_dict() for e, t in by_entity.items()},
        "satellites": {s: t.as_dict() for s, t in by_satellite.items()},
        "streams": per_stream,
        "verdicts_source": "ok" if alerts is not None else "unavailable",
    }
