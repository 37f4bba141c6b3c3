"""The split rule of engine/sharding.py (no processes needed)."""

from __future__ import annotations

import pytest

from efficientdet.engine.distributed import DistInfo
from efficientdet.engine.sharding import (
    broadcast_from_main,
    check_shardable,
    gather_to_main,
    merge_in_order,
    shard_positions,
)


@pytest.mark.parametrize("count,world", [(5, 2), (7, 3), (4, 4), (1000, 7)])
def test_shards_are_disjoint_balanced_and_merge_back_in_order(count: int, world: int) -> None:
    shards = [shard_positions(count, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert sorted(p for s in shards for p in s) == list(range(count))  # disjoint, complete
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # nobody idles
    assert shards[0][:2] == [0, world] if count > world else True
    items = [[(p, f"img{p}") for p in s] for s in shards]
    assert merge_in_order(items) == [f"img{p}" for p in range(count)]


def test_more_processes_than_images_is_refused() -> None:
    check_shardable(2, DistInfo(rank=0, world_size=2))
    with pytest.raises(ValueError, match=r"3 processes \(torchrun --nproc_per_node\) but only 2 images.*--nproc_per_node 2"):
        check_shardable(2, DistInfo(rank=1, world_size=3))
    check_shardable(0, DistInfo())  # alone: the callers' own "no images" errors apply


def test_alone_the_collectives_are_identities() -> None:
    assert gather_to_main({"a": 1}, DistInfo()) == [{"a": 1}]
    assert broadcast_from_main("x", DistInfo()) == "x"
