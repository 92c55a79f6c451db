"""Task `smap_analysis.tasks.run_omnianomaly_inference`: kwargs are an InferenceTask (see schemas)."""

from __future__ import annotations

from typing import Any

from smap_analysis.celery_app import app, settings
from smap_shared.routing import TASK_NAME
from smap_shared.streaming.worker import process_runner


# No Celery retry: transient failures are retried inside, in place (a retry() would re-queue the step
# behind later steps of its stream). A raised error fails the task; with acks_late it is then acked.
@app.task(name=TASK_NAME)  # type: ignore[misc]  # celery is untyped
def run_omnianomaly_inference(**kwargs: Any) -> None:
    process_runner(lambda: settings).execute(kwargs)
