"""Sharding work over ranks and gathering it back, so every rank takes part in evaluation.

Under torchrun / accelerate each rank scores its slice of the items (padded so every rank runs the same
number of batches: FSDP and ZeRO-3 forwards are collective), and the results are gathered on all ranks.
Without a process group this is a plain loop over everything.
"""

from __future__ import annotations

import os


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(timeout_s: int = 1800) -> None:
    """Start the process group early (accelerate's PartialState picks nccl or gloo), so evaluation before
    training can be sharded too. A no-op in a single process. `timeout_s` is train.ddp_timeout: the group
    made here is the one the Trainer reuses, so its timeout is set here."""
    if env_world_size() > 1:
        from datetime import timedelta

        from accelerate import PartialState

        PartialState(timeout=timedelta(seconds=timeout_s))


def shard(n: int) -> list[int]:
    """This rank's item indices, padded with repeats of its first index to ceil(n / world) items."""
    rank, world = rank_world()
    mine = list(range(rank, n, world))
    size = -(-n // world) if n else 0
    if mine and len(mine) < size:
        mine += [mine[0]] * (size - len(mine))
    elif not mine and size:
        mine = [0] * size  # more ranks than items: repeat item 0 (discarded on gather)
    return mine


def gather(indices: list[int], results: list, n: int) -> list:
    """Results of every rank, put back in item order (padding repeats dropped)."""
    import torch.distributed as dist

    rank, world = rank_world()
    pairs = list(zip(indices, results))
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, pairs)
        pairs = [p for part in parts for p in part]
    out: list = [None] * n
    for i, r in pairs:
        if out[i] is None:
            out[i] = r
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
