"""The Celery configuration shared by the publishing side (trigger) and the consuming side (workers), so
both declare the shard queues with the same arguments."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from smap_shared.routing import queue_name
from smap_shared.settings import TriggerSettings, WorkerSettings


def shard_queues(shards: int) -> list[Queue]:
    """One durable direct queue per shard (named and routed by the shard's queue name)."""
    queues = []
    for k in range(shards):
        name = queue_name(k)
        exchange = Exchange(name, type="direct", durable=True)  # type: ignore[no-untyped-call]
        queues.append(Queue(name, exchange, routing_key=name, durable=True))  # type: ignore[no-untyped-call]
    return queues


def make_celery_app(settings: TriggerSettings | WorkerSettings, main: str = "smap_analysis") -> Celery:
    app = Celery(main, broker=settings.celery_broker_url, backend=settings.celery_result_backend,
                 set_as_current=False)
    app.conf.update(
        # Publisher confirms where tasks are published (the trigger): send_task returns only once RabbitMQ has
        # taken the message, so Kafka offsets are committed after that. Workers publish only Flower events;
        # a confirm round trip for each of those costs throughput and protects nothing.
        broker_transport_options={"confirm_publish": isinstance(settings, TriggerSettings)},
        broker_connection_retry_on_startup=True,
        task_queues=shard_queues(settings.inference_shards),
        task_default_queue=queue_name(0),
        task_create_missing_queues=False,  # a typo'd queue name fails loudly instead of piling up
        task_serializer="json",
        accept_content=["json"],
        task_default_delivery_mode="persistent",
        # at-least-once: a task is acked after it ran (its result is in Kafka); a worker that dies mid-task
        # hands it back to the queue, at its place, so the stream's order holds
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Results travel through Kafka (smap-inference-results); nobody reads Celery results, and storing
        # one per step in Redis would only cost a write per frame and memory. The backend stays configured
        # for ad-hoc tasks and tools.
        task_ignore_result=True,
        worker_send_task_events=True,  # Flower
    )
    return app
