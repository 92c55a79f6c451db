"""VictoriaMetrics' scrape configuration (`-promscrape.config`): every service's /metrics and Triton's metrics
endpoint, so the services' own latency histograms, throughput, lag, retries and dead-letter counts are
queryable by PromQL next to the scores (docs/operations.md, "Observability").

The native targets come from the services' settings (the same environment start-smap.sh gives them), one job
per service; `python -m smap_shared.infra.scrape --out .run/promscrape.yml` writes the file scripts/infra.sh
hands to VictoriaMetrics, which re-reads it every few seconds (so a restart with another INFERENCE_SHARDS is
picked up).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smap_shared.settings import (
    AlertManagerSettings,
    ConsumerSettings,
    OperationServerSettings,
    SimulatorSettings,
    TriggerSettings,
    TritonSettings,
    WorkerSettings,
)

SCRAPE_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Target:
    job: str
    address: str  # host:port
    path: str = "/metrics"


def _host(bind_address: str) -> str:
    """Where a service bound to `bind_address` answers this host (0.0.0.0 / :: listen on loopback too)."""
    return "127.0.0.1" if bind_address in ("0.0.0.0", "::", "") else bind_address


def native_targets() -> list[Target]:
    """The services start-smap.sh runs, on the ports their settings give them.

    >>> [t.job for t in native_targets()][:3]
    ['smap-simulator', 'smap-inference-trigger', 'smap-victoria-consumer']
    """
    worker = WorkerSettings()
    host = _host(worker.smap_bind_address)
    out = [
        Target("smap-simulator", f"{host}:{SimulatorSettings().metrics_port}"),
        Target("smap-inference-trigger", f"{host}:{TriggerSettings().metrics_port}"),
        Target("smap-victoria-consumer", f"{host}:{ConsumerSettings().metrics_port}"),
        Target("smap-operation-server", f"{host}:{OperationServerSettings().metrics_port}"),
        Target("smap-alert-manager", f"{host}:{AlertManagerSettings().metrics_port}"),
    ]
    out += [Target("smap-analysis-worker", f"{host}:{worker.metrics_port + k}")
            for k in range(worker.inference_shards)]
    out.append(Target("triton", f"{host}:{TritonSettings().triton_metrics_port}"))
    return out


def scrape_config(targets: Sequence[Target], interval_s: float = SCRAPE_INTERVAL_S) -> str:
    """The promscrape YAML (written as JSON, which YAML reads): one job per service, `instance` per target.

    >>> print(scrape_config([Target("triton", "127.0.0.1:8102")], 5))
    {"global": {"scrape_interval": "5s"}, "scrape_configs": [{"job_name": "triton", "metrics_path": "/metrics", \
"static_configs": [{"targets": ["127.0.0.1:8102"]}]}]}
    """
    jobs: dict[tuple[str, str], list[str]] = {}
    for t in targets:
        jobs.setdefault((t.job, t.path), []).append(t.address)
    return json.dumps({
        "global": {"scrape_interval": f"{interval_s:g}s"},
        "scrape_configs": [{"job_name": job, "metrics_path": path, "static_configs": [{"targets": addrs}]}
                           for (job, path), addrs in jobs.items()],
    })


def write_scrape_config(path: Path, targets: Sequence[Target], interval_s: float = SCRAPE_INTERVAL_S) -> None:
    """Write the file whole (VictoriaMetrics re-reads it: never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(scrape_config(targets, interval_s) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write VictoriaMetrics' scrape configuration of the native mode.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--interval-s", type=float, default=SCRAPE_INTERVAL_S)
    args = ap.parse_args(argv)
    write_scrape_config(args.out, native_targets(), args.interval_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
