"""Splitting a list of work items between processes: `--shard I/N`, or the RANK / WORLD_SIZE variables that
`torchrun` (and `accelerate launch`, which runs through torch.distributed.run) set for each process.

The split is deterministic and needs no communication: the items are sorted, and process I of N takes every N-th
item starting at I (round robin, so a sorted folder of similar photos spreads evenly). Every process computes the
same sorted list, so the shards are disjoint and together cover every item once. Torch-free.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int = 0  # this process, 0 ≤ index < count
    count: int = 1  # processes in all

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int) and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= I < N (e.g. 0/2 and 1/2)")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def take(self, items: Sequence[T], key=str) -> list[T]:
        """This shard's items: ``sorted(items, key=key)[index::count]`` (stable sort, so equal keys keep order)."""
        return sorted(items, key=key)[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'I/N' → Shard(I, N); a clear ValueError otherwise."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"{text!r} is not a shard: write I/N, e.g. 0/2 for the first of two processes") from None
    return Shard(i, n)


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard:
    """The shard of a process started by torchrun / accelerate launch (RANK, WORLD_SIZE); Shard(0, 1) otherwise."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Shard()
    try:
        return Shard(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
    except ValueError as exc:
        raise ValueError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env.get('WORLD_SIZE')!r}: {exc}") from None
