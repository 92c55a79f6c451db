"""Honest evaluation of the deployed detector on SMAP: how often is an alarm real?

    python -m smap_shared.evaluation.evaluate                      # all 54 channels -> reports/
    python -m smap_shared.evaluation.evaluate --channels A-1 P-2 --json /tmp/e.json --md /tmp/e.md

Each channel's checkpoint (trained when missing with --train-missing) scores its train and test splits
through `Scorer.run`, the pipeline's own inference path (normalise, stateful GRU step from a zero state,
per-sensor squared error). Every decision rule is fitted on the train split only, then run step by step
over the test split; the decisions are scored against labeled_anomalies.csv (inclusive ends, a channel's
rows merged) at event level (telemanom), point-wise (no point-adjust), with PA%K, AUPRC, ROC-AUC and
detection delay. Aggregates sum TP/FP/FN over channels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smap_shared.evaluation.metrics import (
    PA_K_REPORTED,
    ChannelMetrics,
    Counts,
    aggregate,
    cause_tally,
    channel_metrics,
    count_metrics,
)
from smap_shared.evaluation.plots import RuleTrace, plot_channel
from smap_shared.evaluation.report import PUBLISHED, render_markdown
from smap_shared.evaluation.scoring import score_channel
from smap_shared.evaluation.selection import GRID, oracle_counts, selection_report
from smap_shared.evaluation.vectorised import grid_detections
from smap_shared.model.rules import (
    ALARM_CAUSES,
    DEADBAND_RULE,
    DEPLOYED_RULE_NAME,
    HYBRID_RULE,
    LATCH_RULE,
    QUIET_RULE,
    SCALE_FREE_RULE,
    STEP_RULE,
    CausalNdtRule,
    FixedRule,
    Rule,
    TrainPotRule,
)
from smap_shared.model.rules import DEPLOYED_RULE as DEPLOYED

#: The rules compared, in report order. All are fitted on train data only.
RULES: dict[str, Rule] = {
    "fixed": FixedRule(),
    "train_pot": TrainPotRule(),
    "causal_ndt": CausalNdtRule(),
    "causal_ndt_hybrid": HYBRID_RULE,  # deployed before causal_ndt_step
    "causal_ndt_step": STEP_RULE,  # deployed before causal_ndt_quiet
    "causal_ndt_quiet": QUIET_RULE,  # deployed before causal_ndt_latch
    "causal_ndt_latch": LATCH_RULE,  # deployed before causal_ndt_scale_free
    "causal_ndt_scale_free": SCALE_FREE_RULE,  # deployed before causal_ndt_deadband
    "causal_ndt_deadband": DEADBAND_RULE,  # deployed before causal_ndt_nested
    DEPLOYED_RULE_NAME: DEPLOYED,
}
DEPLOYED_RULE = DEPLOYED_RULE_NAME
#: The deployed rule's name in the selection grid (None if it is not a candidate).
DEPLOYED_VARIANT = next((k for k, v in GRID.items() if v == DEPLOYED), None)


@dataclass(frozen=True)
class ChannelResult:
    channel: str
    metrics: dict[str, ChannelMetrics]  # per rule
    fitted: dict[str, dict[str, Any]]  # per rule: fitted parameters (large arrays summarised)
    checkpoint_threshold: float
    seconds: float
    grid: dict[str, ChannelMetrics] | None = None  # selection diagnostics (see selection.py)
    oracle: tuple[Counts, Counts] | None = None
    causes: dict[str, dict[str, int]] | None = None  # the deployed rule's alarm causes (metrics.cause_tally)


def _summarise(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, list) and len(v) > 8:
            arr = np.asarray(v, dtype=np.float64)
            out[k] = {"length": len(v), "min": float(arr.min()), "max": float(arr.max()), "last": float(arr[-1])}
        else:
            out[k] = v
    return out


def evaluate_channel(
    channel: str, ckpt_dir: str, data_dir: str | None, plots_dir: str | None, cache_dir: str | None,
    selection: bool = True, spacecraft: str | None = None, labels_csv: str | None = None,
) -> ChannelResult:
    """Score one channel with every rule (runs in a worker process)."""
    from smap_shared.data import default_source

    t0 = time.perf_counter()
    data = default_source(Path(data_dir) if data_dir else None, spacecraft,
                          Path(labels_csv) if labels_csv else None).load(channel)
    sc = score_channel(Path(ckpt_dir) / f"{channel}.ckpt", data, Path(cache_dir) if cache_dir else None)
    metrics: dict[str, ChannelMetrics] = {}
    fitted: dict[str, dict[str, Any]] = {}
    traces: dict[str, RuleTrace] = {}
    causes: dict[str, dict[str, int]] | None = None
    for name, rule in RULES.items():
        r = rule.fit(sc.train.score, sc.train.sensor_error, data.train)
        out = r.run(sc.test.score, sc.test.sensor_error, raw=data.test)
        metrics[name] = channel_metrics(out.detected, out.signal, sc.segments)
        fitted[name] = _summarise(r.to_dict())
        traces[name] = RuleTrace(out.signal, out.threshold, out.detected)
        if name == DEPLOYED_RULE:
            causes = cause_tally(out.detected, out.cause, sc.segments)
    grid: dict[str, ChannelMetrics] | None = None
    oracle: tuple[Counts, Counts] | None = None
    if selection:
        detected = grid_detections(GRID, sc.train.score, sc.train.sensor_error, data.train, sc.test.score,
                                   sc.test.sensor_error, data.test)
        if DEPLOYED_VARIANT is not None and not np.array_equal(detected[DEPLOYED_VARIANT],
                                                               traces[DEPLOYED_RULE].detected):
            raise AssertionError(f"{channel}: the vectorised grid disagrees with the deployed rule's own run")
        grid = {name: count_metrics(det, sc.segments) for name, det in detected.items()}  # what selection reads
        dep = RULES[DEPLOYED_RULE]
        skip = dep.warmup if isinstance(dep, CausalNdtRule) else 0
        oracle = oracle_counts(traces[DEPLOYED_RULE].signal, sc.segments, skip)
    if plots_dir:
        plot_channel(
            Path(plots_dir) / f"{channel}.png", channel, data.test[:, 0], sc.test.score, sc.segments,
            traces, DEPLOYED_RULE,
        )
    return ChannelResult(
        channel, metrics, fitted, sc.checkpoint_threshold, time.perf_counter() - t0, grid, oracle, causes
    )


def ensure_checkpoints(channels: Sequence[str], ckpt_dir: Path, train_missing: bool, data_dir: Path | None,
                       jobs: int) -> list[str]:
    from smap_shared.model.train import TrainConfig, train_many

    missing = [c for c in channels if not (ckpt_dir / f"{c}.ckpt").exists()]
    if missing and not train_missing:
        raise SystemExit(
            f"{len(missing)} checkpoints missing in {ckpt_dir} ({', '.join(missing[:6])}...): "
            "pass --train-missing to train them"
        )
    if missing:
        train_many(missing, ckpt_dir, TrainConfig(), data_dir, jobs)
    return missing


def build_report(results: list[ChannelResult], args: argparse.Namespace, seconds: float,
                 trained: list[str]) -> dict[str, Any]:
    from smap_shared.model.checkpoint import Checkpoint

    results = sorted(results, key=lambda r: _order(r.channel))
    rules: dict[str, Any] = {}
    for name, rule in RULES.items():
        per = {r.channel: r.metrics[name] for r in results}
        rules[name] = {
            "params": _summarise(rule.to_dict()),
            "aggregate": aggregate(list(per.values())).as_dict(),
            "channels": {ch: {**m.as_dict(), "fitted": next(x.fitted[name] for x in results if x.channel == ch)}
                         for ch, m in per.items()},
        }
    # which of the deployed rule's alarms found the events and raised the false alarms
    rules[DEPLOYED_RULE]["alarm_causes"] = {
        kind: {name: sum((r.causes or {}).get(kind, {}).get(name, 0) for r in results)
               for name in ALARM_CAUSES.values()}
        for kind in ("events", "false_alarms")
    }
    selection = None
    if all(r.grid is not None and r.oracle is not None for r in results) and len(results) >= 2:
        selection = selection_report(
            {r.channel: r.grid for r in results if r.grid is not None},
            {r.channel: r.oracle for r in results if r.oracle is not None},
        )
        selection["deployed_variant"] = DEPLOYED_VARIANT
    meta = Checkpoint.load(Path(args.checkpoints) / f"{results[0].channel}.ckpt").meta
    dataset = getattr(args, "dataset", "SMAP")
    return {
        "command": "python -m smap_shared.evaluation.evaluate " + " ".join(args.argv),
        "dataset": dataset,  # the spacecraft whose labels were scored (from labeled_anomalies.csv)
        "deployed_rule": DEPLOYED_RULE,
        "channels": [r.channel for r in results],
        "n_channels": len(results),
        "n_events": sum(r.metrics[DEPLOYED_RULE].n_segments for r in results),
        "n_rows": sum(r.metrics[DEPLOYED_RULE].n_rows for r in results),
        "protocol": {
            "labels": "labeled_anomalies.csv, inclusive [start, end], a channel's rows merged (P-2 has two)",
            "inference": "Scorer.run: normalise, stateful GRU step by step from a zero state per split",
            "fitting": "every rule is fitted on the train split's scores and sensor errors only",
            "event": "telemanom: a segment is found if any flagged row lies in it; each maximal flagged run "
                     "overlapping no segment is one false positive",
            "point": "row by row, no point-adjust",
            "pa_k": f"Kim et al. AAAI 2022: segment fully flagged when its flagged share > K/100; F1 at K in "
                    f"{list(PA_K_REPORTED)}; f1_area over K = 0..100 (step 1); K = 0 is classic PA",
            "auprc_roc_auc": "of the value each rule thresholds (the raw anomaly score for fixed and "
                             "train_pot, the smoothed value-column error for causal_ndt); aggregate = mean "
                             "over channels",
            "delay": "rows from a segment's start to its first flag inside it, detected segments only",
            "aggregate": "TP/FP/FN summed over channels, then precision/recall/F1",
        },
        "train_config": meta.get("train_config"),
        "trained_now": trained,
        "rules": rules,
        "selection": selection,
        "published": PUBLISHED if dataset == "SMAP" else [],  # SMAP's published numbers apply to SMAP only
        "checkpoint_thresholds": {r.channel: r.checkpoint_threshold for r in results},
        "runtime": {
            "seconds": round(seconds, 1), "jobs": args.jobs, "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
    }


def _order(channel: str) -> tuple[str, int]:
    from smap_shared.data.loader import channel_sort_key

    return channel_sort_key(channel)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", nargs="+", default=None, help="default: every SMAP channel")
    ap.add_argument("--json", type=Path, default=Path("reports/evaluation.json"))
    ap.add_argument("--md", type=Path, default=Path("reports/evaluation.md"))
    ap.add_argument("--plots", type=Path, default=Path("reports/plots"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--train-missing", action="store_true", help="train channels without a checkpoint")
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("SMAP_DATA_DIR") or None,
                    help="a folder in telemanom's layout, of any spacecraft (default: the vendored SMAP copy)")
    ap.add_argument("--spacecraft", default=None,
                    help="score only this spacecraft's label rows (default: every row whose channel has arrays)")
    ap.add_argument("--labels", type=Path, default=None,
                    help="score against this labeled_anomalies.csv instead of the data's, e.g. the operators' "
                         "verdicts (GET /api/smap/verdicts/labeled_anomalies.csv; --spacecraft: a satellite)")
    ap.add_argument("--score-cache", type=Path, default=None,
                    help="reuse scores of unchanged checkpoints and data (keyed by their content)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-selection", action="store_true",
                    help="skip the selection diagnostics (rule grid, cross-channel selection, oracle)")
    args = ap.parse_args(argv)
    args.argv = argv
    from tqdm import tqdm

    from smap_shared.data import LabelError, default_source

    try:
        source = default_source(args.data_dir, args.spacecraft, args.labels)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from exc
    channels = args.channels or source.channels()
    unknown = sorted(set(channels) - set(source.channels()))
    if unknown:
        raise SystemExit(f"unknown channels: {', '.join(unknown)}")
    if not channels:
        raise SystemExit(f"no channel with train and test arrays in {args.data_dir}")
    try:
        args.dataset = source.dataset(channels)  # every scored channel has its label row, or no evaluation
    except LabelError as exc:
        raise SystemExit(f"error: {exc}") from exc
    t0 = time.perf_counter()
    trained = ensure_checkpoints(channels, args.checkpoints, args.train_missing, args.data_dir, args.jobs)
    plots = None if args.no_plots else str(args.plots)
    data_dir = str(args.data_dir) if args.data_dir else None
    cache = str(args.score_cache) if args.score_cache else None
    results: list[ChannelResult] = []
    bar = tqdm(total=len(channels), desc="evaluating", unit="channel", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [
            pool.submit(
                evaluate_channel, ch, str(args.checkpoints), data_dir, plots, cache, not args.no_selection,
                args.spacecraft, str(args.labels) if args.labels else None,
            )
            for ch in channels
        ]
        for fut in as_completed(futs):
            res = fut.result()
            results.append(res)
            ev = res.metrics[DEPLOYED_RULE].event
            bar.set_postfix_str(f"{res.channel}: {ev.tp}/{ev.fp}/{ev.fn} TP/FP/FN, {res.seconds:.1f}s")
            bar.update()
    bar.close()
    report = build_report(results, args, time.perf_counter() - t0, trained)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(render_markdown(report, plots_dir=None if args.no_plots else args.plots, md_path=args.md))
    agg = report["rules"][DEPLOYED_RULE]["aggregate"]
    print(
        f"{DEPLOYED_RULE}: event F1 {agg['event']['f1']:.3f} ({agg['event']['tp']}/{agg['event']['fp']}/"
        f"{agg['event']['fn']} TP/FP/FN), point-wise F1 {agg['point']['f1']:.3f} -> {args.json}, {args.md}"
    )


if __name__ == "__main__":
    main()
