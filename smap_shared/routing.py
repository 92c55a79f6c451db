"""Stream -> shard queue routing. One ordered queue per shard, consumed by one worker process with
prefetch 1, keeps each stream's steps in order; a stable hash keeps a stream on one shard across restarts
and across processes (Python's hash() is salted per process, so it is not used)."""

from __future__ import annotations

import zlib

TASK_NAME = "smap_analysis.tasks.run_omnianomaly_inference"  # one frame (kwargs: InferenceTask)
BATCH_TASK_NAME = "smap_analysis.tasks.run_omnianomaly_batch"  # a micro-batch (kwargs: InferenceBatch)
QUEUE_PREFIX = "smap-inference-shard"


def shard_of(stream_id: str, shards: int) -> int:
    if shards < 1:
        raise ValueError("shards must be >= 1")
    return zlib.crc32(stream_id.encode("utf-8")) % shards


def queue_name(shard: int) -> str:
    return f"{QUEUE_PREFIX}-{shard}"


def queue_for(stream_id: str, shards: int) -> str:
    return queue_name(shard_of(stream_id, shards))
