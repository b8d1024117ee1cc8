"""Split a list of cases between ``torchrun`` ranks (no process group needed: only RANK/WORLD_SIZE)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world


def rank_share(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """Items ``rank, rank + world, ...``: every item goes to exactly one rank."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    return list(items[rank::world])
