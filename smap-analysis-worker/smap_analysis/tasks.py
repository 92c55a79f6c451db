"""Tasks `smap_analysis.tasks.run_omnianomaly_batch` (kwargs: an InferenceBatch, what the trigger publishes)
and `smap_analysis.tasks.run_omnianomaly_inference` (kwargs: one InferenceTask; a user may call it by hand)."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Reject

from smap_analysis.celery_app import app, settings, shard_busy
from smap_shared.routing import BATCH_TASK_NAME, TASK_NAME
from smap_shared.streaming.retry import StoppedError
from smap_shared.streaming.worker import process_runner


# No Celery retry: transient failures are retried inside, in place, for as long as they last (a retry() would
# re-queue the step behind later steps of its stream). A stop during such a retry rejects the task with
# requeue: RabbitMQ hands it back at its place (prefetch 1: nothing of this queue overtook it), so nothing is
# lost. Any other raised error fails the task, and with acks_late it is then acked.
# While a batch runs, its queue is flagged busy (ShardBusy): the trigger then lets the shard's next batch grow
# instead of queueing a small one behind this one. The flag is best effort and never fails the task.
@app.task(name=BATCH_TASK_NAME, bind=True)  # type: ignore[misc]  # celery is untyped
def run_omnianomaly_batch(self: Any, **kwargs: Any) -> None:
    queue = (self.request.delivery_info or {}).get("routing_key")
    try:
        with shard_busy.running(queue):
            process_runner(lambda: settings).execute_batch(kwargs)
    except StoppedError as exc:
        raise Reject(str(exc), requeue=True) from exc


@app.task(name=TASK_NAME)  # type: ignore[misc]
def run_omnianomaly_inference(**kwargs: Any) -> None:
    try:
        process_runner(lambda: settings).execute(kwargs)
    except StoppedError as exc:
        raise Reject(str(exc), requeue=True) from exc
