"""Stream -> shard queue routing. One ordered queue per shard, consumed by one worker process with
prefetch 1, keeps each stream's steps in order; the route of a stream depends only on the fleet's list of
deployed models and the shard count, so it is the same in every process and across restarts (Python's
hash() is salted per process, so it is not used).

Routing is model-affine: every stream of an entity (one Triton model) goes to the same shard, so a task asks
each of its models once with all of that model's rows. Triton's cost is mostly per request (~1 ms of CPU
against ~0.16 ms per row here), and a task of a 1,000-stream fleet then makes 10 requests of ~12 rows on each
of two shards instead of 20 of ~6 (docs/benchmarks.md). Entities are dealt round-robin in the fleet's
`deployed` order, which balances a constellation (every satellite flying the same entities) exactly; a
satellite added never moves a stream, and an entity appended at the end of `deployed` moves no other. With
more shards than entities, each entity's streams are spread over `shards // entities` shards by satellite.
Changing the shard count or the `deployed` list moves streams between queues: drain the queues first.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

TASK_NAME = "smap_analysis.tasks.run_omnianomaly_inference"  # one frame (kwargs: InferenceTask)
BATCH_TASK_NAME = "smap_analysis.tasks.run_omnianomaly_batch"  # a micro-batch (kwargs: InferenceBatch)
QUEUE_PREFIX = "smap-inference-shard"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class ShardMap:
    """Which shard each stream (satellite, entity) goes to, for a fleet's deployed models.

    >>> m = ShardMap(("A-1", "A-2", "D-1"), shards=2)
    >>> [m.shard("SAT-001", e) for e in ("A-1", "A-2", "D-1")], m.shard("SAT-007", "A-2")
    ([0, 1, 0], 1)
    >>> one = ShardMap(("A-1",), shards=4)  # more shards than entities: spread by satellite
    >>> sorted({one.shard(f"SAT-{i:03d}", "A-1") for i in range(40)})
    [0, 1, 2, 3]
    """

    def __init__(self, deployed: Sequence[str], shards: int) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.shards = shards
        self.position = {entity: i for i, entity in enumerate(dict.fromkeys(deployed))}
        #: shards each entity's streams are spread over (1 unless there are more shards than entities)
        self.spread = max(1, shards // max(1, len(self.position)))

    def shard(self, satellite_id: str, entity: str) -> int:
        pos = self.position.get(entity)
        if pos is None:  # not a deployed model (the trigger dead-letters such frames before routing them)
            return _crc(f"{satellite_id}/{entity}") % self.shards
        offset = _crc(satellite_id) % self.spread if self.spread > 1 else 0
        return (pos * self.spread + offset) % self.shards

    def queue(self, satellite_id: str, entity: str) -> str:
        return queue_name(self.shard(satellite_id, entity))


def queue_name(shard: int) -> str:
    return f"{QUEUE_PREFIX}-{shard}"
