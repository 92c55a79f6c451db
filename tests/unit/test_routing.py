"""Model-affine routing: every stream of a model on one shard, a constellation spread evenly, stable routes."""

from __future__ import annotations

from collections import Counter

import pytest

from smap_shared.fleet import default_fleet
from smap_shared.routing import ShardMap, queue_name

ENTITIES = default_fleet().deployed  # the 20 deployed models, in the fleet's order
SATELLITES = [f"SAT-{i:03d}" for i in range(1, 51)]


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 20])
def test_a_model_has_one_shard_and_a_constellation_is_spread_evenly(shards: int) -> None:
    routes = ShardMap(ENTITIES, shards)
    for entity in ENTITIES:
        assert len({routes.shard(sat, entity) for sat in SATELLITES}) == 1
    load = Counter(routes.shard(sat, e) for sat in SATELLITES for e in ENTITIES)
    assert sorted(load) == list(range(shards))
    assert max(load.values()) - min(load.values()) <= len(SATELLITES)  # at most one model's streams apart


def test_more_shards_than_models_spreads_each_model_by_satellite() -> None:
    routes = ShardMap(("A-1", "P-1"), 8)
    assert routes.spread == 4
    a1 = {routes.shard(sat, "A-1") for sat in SATELLITES}
    p1 = {routes.shard(sat, "P-1") for sat in SATELLITES}
    assert a1 == {0, 1, 2, 3} and p1 == {4, 5, 6, 7}


def test_routes_do_not_move_when_satellites_or_later_models_are_added() -> None:
    before = ShardMap(ENTITIES, 3)
    after = ShardMap((*ENTITIES, "X-1", "X-2"), 3)  # models appended at the end of `deployed`
    assert all(before.shard(sat, e) == after.shard(sat, e) for sat in [*SATELLITES, "SAT-999"] for e in ENTITIES)


def test_routes_are_the_same_in_every_process_and_queue_names_follow_shards() -> None:
    routes = ShardMap(ENTITIES, 2)
    assert [routes.shard("SAT-001", e) for e in ENTITIES[:4]] == [0, 1, 0, 1]  # round-robin in fleet order
    assert routes.queue("SAT-001", ENTITIES[1]) == queue_name(1) == "smap-inference-shard-1"
    assert routes.shard("SAT-001", "Z-9") == ShardMap(ENTITIES, 2).shard("SAT-001", "Z-9")  # not deployed: hashed
    with pytest.raises(ValueError, match="shards"):
        ShardMap(ENTITIES, 0)
