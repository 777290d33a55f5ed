"""Split gauntlet examples over the processes of a distributed run, then put the results back together.

Pure torch (``torch.distributed``; gloo on CPU, nccl on GPU). Every rank builds every prompt (cheap and
deterministic, so few-shot sampling is the same as in one process), scores only its share, and an
``all_gather_object`` returns each example's result to its place: every rank ends with the full,
identical results, exactly what one process would have computed.

Two ways a model can be spread over ranks:

* every rank holds the whole model (``scripts/eval.py`` under ``composer -n N``, or DDP training):
  ranks score their shares independently;
* the model is sharded (FSDP): every forward is a collective, so all ranks must call the model the
  same number of times. ``lockstep=True`` adds one tiny all-reduce before each call; a rank that ran
  out of work answers with a one-token dummy forward until every rank is done.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch


class Shard:
    """This process's place in the run: ``rank`` of ``world``; one process when not distributed."""

    def __init__(self, rank: int = 0, world: int = 1, lockstep: bool = False, group: Any = None):
        if not 0 <= rank < world:
            raise ValueError(f'rank {rank} is outside a world of {world}')
        self.rank, self.world, self.lockstep, self.group = rank, world, lockstep, group

    @classmethod
    def detect(cls, lockstep: bool = False) -> Shard:
        """The initialized default process group, if any (Composer and ``scripts/eval.py`` set it up)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), lockstep)
        return cls()

    @property
    def active(self) -> bool:
        return self.world > 1

    def assign(self, sizes: Sequence[int], keys: Optional[Sequence[Any]] = None) -> list[int]:
        """Indices this rank scores.

        Examples with the same ``key`` stay together (the scorer batches equal context lengths without
        padding and runs a shared context once, so splitting such a group would cost extra forwards);
        a group larger than an even share is cut into even-share pieces. Pieces go, largest first, to
        the rank with the fewest tokens so far (ties: lower rank), so ranks get similar token counts.
        ``keys`` default to ``sizes``.
        """
        n = len(sizes)
        if self.world == 1:
            return list(range(n))
        keys = sizes if keys is None else keys
        groups: dict[Any, list[int]] = {}
        for i in sorted(range(n), key=lambda i: (-sizes[i], i)):
            groups.setdefault(keys[i], []).append(i)
        share = max(1, -(-n // self.world))
        pieces = [g[s:s + share] for g in groups.values() for s in range(0, len(g), share)]
        pieces.sort(key=lambda p: (-sum(sizes[i] for i in p), p[0]))
        load = [0] * self.world
        mine: list[int] = []
        for p in pieces:
            r = min(range(self.world), key=lambda r: (load[r], r))
            load[r] += sum(sizes[i] for i in p)
            if r == self.rank:
                mine += p
        return sorted(mine)

    def gather(self, mine: Sequence[int], values: Sequence[Any], n: int) -> list[Any]:
        """Every rank's ``values`` (for indices ``mine``) put back in example order, on every rank."""
        if not self.active:
            return list(values)
        import torch.distributed as dist
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, (list(mine), list(values)), group=self.group)
        out: list[Any] = [None] * n
        for idx, vals in parts:
            for i, v in zip(idx, vals):
                out[i] = v
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            raise RuntimeError(f'gauntlet sharding lost {len(missing)} example(s) (first {missing[0]})')
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (so all ranks take the same cache decision)."""
        if not self.active:
            return obj
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _all_reduce(self, value: int, device) -> int:
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def in_lockstep(self, dummy: Callable[[], Any], device) -> Lockstep:
        return Lockstep(self, dummy, device)


class Lockstep:
    """Keeps ranks calling a sharded model the same number of times.

    Wrap each model call with :meth:`wrap`; when this rank has no more work, :meth:`drain` runs dummy
    calls until every rank is done. Each round is one all-reduce of "I have a real call" flags then one
    model call on every rank; the round where the flags sum to zero ends it everywhere at once.
    """

    def __init__(self, shard: Shard, dummy: Callable[[], Any], device):
        import torch.distributed as dist
        self.shard, self.dummy = shard, dummy
        # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
        self.device = torch.device(device) if dist.get_backend(shard.group) == 'nccl' else torch.device('cpu')

    def wrap(self, fn: Optional[Callable]) -> Optional[Callable]:
        if fn is None:
            return None

        def call(*args, **kwargs):
            self.shard._all_reduce(1, self.device)
            return fn(*args, **kwargs)
        return call

    def drain(self) -> None:
        while self.shard._all_reduce(0, self.device) > 0:
            self.dummy()
