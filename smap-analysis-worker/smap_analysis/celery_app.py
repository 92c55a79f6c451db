"""The worker's Celery app (`celery -A smap_analysis.celery_app worker ...`).

Start one worker per shard queue, one pool thread, prefetch 1, so each stream's steps run one after another
(the solo pool stalls ~2 s between tasks under acks_late + prefetch 1 here; one thread does not):
    cd smap-analysis-worker && SHARD_INDEX=$k ../.venv/bin/celery -A smap_analysis.celery_app worker \
        -Q smap-inference-shard-$k -c 1 --prefetch-multiplier 1 -n shard$k@%h --pool threads -E
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_ready, worker_shutdown, worker_shutting_down
from prometheus_client import start_http_server

from smap_shared.settings import WorkerSettings
from smap_shared.streaming.celery_app import ShardBusy, make_celery_app
from smap_shared.streaming.worker import SHUTDOWN, close_process_runner, worker_metrics_port

log = logging.getLogger(__name__)


def create_app(settings: WorkerSettings) -> Celery:
    app = make_celery_app(settings, main="smap_analysis")
    app.conf.include = ["smap_analysis.tasks"]
    return app


settings = WorkerSettings()
app = create_app(settings)
shard_busy = ShardBusy(settings.celery_result_backend, settings.celery_broker_url)


def _start_metrics(**_: Any) -> None:
    # threads pool: the process that runs the tasks is the one serving their metrics (worker_ready: after
    # the logging setup, before the first task)
    port = worker_metrics_port(settings)
    start_http_server(port, addr=settings.smap_bind_address)
    log.info("metrics on %s:%d", settings.smap_bind_address, port)


def _stopping(**_: Any) -> None:
    # a task blocked on a transient fault stops retrying and goes back to its queue (warm shutdown waits
    # for it)
    SHUTDOWN.set()


def _close(**_: Any) -> None:
    close_process_runner()
    shard_busy.close()


def _log_level(logger: logging.Logger, **_: Any) -> None:
    # the worker command line has no -l: the level comes from the settings, like the other services
    logger.setLevel(settings.log_level.upper())


worker_ready.connect(_start_metrics, weak=False)
worker_shutting_down.connect(_stopping, weak=False)
worker_shutdown.connect(_close, weak=False)
after_setup_logger.connect(_log_level, weak=False)
