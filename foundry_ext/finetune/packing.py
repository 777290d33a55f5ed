"""Packing math (pure torch): positions and masks that keep packed examples apart, and ``auto``.

A packed row holds several examples one after another; ``sequence_id`` (batch, seq) numbers them
0, 1, 2 ... and is -1 on padding (LLM Foundry's convention). An example must see only itself:

* :func:`position_ids` restarts positions at 0 at every example (learned / rotary positions then
  match the example run alone);
* :func:`block_causal_mask` is the additive (batch, 1, seq, seq) mask HF attention takes as a 4D
  ``attention_mask``: query i sees key j iff they are in the same example and j <= i (and, with a
  sliding window w, i - j < w, the Mistral convention).

:func:`auto_packing_ratio` picks ``packing_ratio: auto`` from the examples' lengths: the largest
ratio that leaves no example over when packing a sample of them, replaying (:func:`pack_sizes`) the
first-fit-decreasing algorithm of LLM Foundry's ``BinPackCollator``, which packs the real batches.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import torch

__all__ = ['position_ids', 'block_causal_mask', 'is_packed', 'auto_packing_ratio', 'simulate', 'pack_sizes']


def is_packed(sequence_id: Optional[torch.Tensor]) -> bool:
    """Does any row hold more than one example?"""
    return sequence_id is not None and sequence_id.numel() > 0 and bool((sequence_id.max(dim=-1).values > 0).any())


def position_ids(sequence_id: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 at the first token of every example (and of the padding run)."""
    b, s = sequence_id.shape
    idx = torch.arange(s, device=sequence_id.device).expand(b, s)
    start = torch.ones_like(sequence_id, dtype=torch.bool)
    start[:, 1:] = sequence_id[:, 1:] != sequence_id[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def block_causal_mask(sequence_id: torch.Tensor, dtype: torch.dtype = torch.float32,
                      sliding_window: Optional[int] = None) -> torch.Tensor:
    """(batch, 1, seq, seq) additive mask: 0 where attention is allowed, the dtype's minimum elsewhere.
    Padding (-1) attends causally among itself, so no row is fully masked."""
    s = sequence_id.shape[-1]
    i = torch.arange(s, device=sequence_id.device)
    allowed = (sequence_id[:, :, None] == sequence_id[:, None, :]) & (i[:, None] >= i[None, :])[None]
    if sliding_window is not None and sliding_window > 0:
        allowed &= (i[:, None] - i[None, :] < sliding_window)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sequence_id.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def pack_sizes(sizes: Sequence[int], num_bins: int, max_bin: int,
               leftovers: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """One call of LLM Foundry's ``BinPackCollator`` on sizes only: first-fit-decreasing into the
    leftover bins plus new ones, keeping enough examples back to open ``num_bins`` bins; returns
    (the ``num_bins`` fullest bins, the rest: leftovers for the next call). Same order of operations
    as LLM Foundry (tests/unit/finetune check it against the real packer)."""
    bins = list(leftovers)
    order = sorted(sizes, reverse=True)
    if len(order) < max(0, num_bins - len(bins)):
        bins += order
    else:
        for i, size in enumerate(order):
            if len(order) - i == max(0, num_bins - len(bins)):
                bins.append(size)
                continue
            for b in range(len(bins)):
                if bins[b] + size <= max_bin:
                    bins.append(bins.pop(b) + size)
                    break
            else:
                bins.append(size)
    bins.sort(reverse=True)
    return bins[:num_bins], bins[num_bins:]


def simulate(lengths: Sequence[int], ratio: float, batch_size: int, max_seq_len: int) -> tuple[float, float]:
    """Pack ``lengths`` in order, ``int(ratio * batch_size)`` examples per batch. Returns (padding
    fraction of the emitted rows at ``max_seq_len``, fraction of tokens still left over at the end)."""
    raw = max(batch_size, int(ratio * batch_size))
    sizes = [min(int(n), max_seq_len) for n in lengths]
    left: list[int] = []
    packed = total = rows = 0
    for k in range(0, len(sizes) - raw + 1, raw):
        chunk = sizes[k:k + raw]
        out, left = pack_sizes(chunk, batch_size, max_seq_len, left)
        packed += sum(out)
        total += sum(chunk)
        rows += batch_size
    if rows == 0:
        return 0.0, 0.0
    return 1 - packed / (rows * max_seq_len), 1 - packed / total


def batch_slots(lengths: Sequence[int], batch_size: int, max_seq_len: int, ratio: Optional[float] = None,
                trim: bool = True, multiple_of: int = 8) -> int:
    """Token slots (rows x row length) the batches of these examples take, as the collator builds them."""
    sizes = [min(int(n), max_seq_len) for n in lengths]

    def width(rows: Sequence[int]) -> int:
        return min(max_seq_len, -(-max(rows) // multiple_of) * multiple_of) if trim else max_seq_len
    slots = 0
    if not ratio or ratio <= 1:
        for k in range(0, len(sizes), batch_size):
            chunk = sizes[k:k + batch_size]
            slots += len(chunk) * width(chunk)
        return slots
    raw = max(batch_size, int(ratio * batch_size))
    left: list[int] = []
    for k in range(0, len(sizes), raw):
        out, left = pack_sizes(sizes[k:k + raw], batch_size, max_seq_len, left)
        if out:
            slots += len(out) * width(out)
    return slots


def auto_packing_ratio(lengths: Sequence[int], batch_size: int, max_seq_len: int, seed: int = 0,
                       max_batches: int = 100) -> float:
    """The largest packing ratio (1.0 .. the row capacity, steps of 0.1..) with no tokens left over
    after packing up to ``max_batches`` batches of a seeded sample of ``lengths``."""
    if not lengths:
        return 1.0
    sizes = [min(int(n), max_seq_len) for n in lengths]
    mean = sum(sizes) / len(sizes)
    cap = max(1.0, max_seq_len / max(mean, 1.0))
    cands = sorted({round(1 + (cap * 1.25 - 1) * k / 24, 1) for k in range(25)})
    rng = random.Random(seed)
    best, seen = 1.0, {batch_size}
    for r in cands:
        raw = int(r * batch_size)
        if raw in seen:
            continue  # the same number of examples per batch as a smaller ratio
        seen.add(raw)
        n = min(len(sizes), raw * max_batches)
        if n < raw:
            break  # not even one batch of this many examples
        sample = rng.sample(sizes, n) if n < len(sizes) else list(sizes)
        _, waste = simulate(sample, r, batch_size, max_seq_len)
        if waste > 0:
            break
        best = r
    return float(best)


def examples_per_row(ratio: float) -> str:
    return f'{ratio:.1f}' if not math.isclose(ratio, round(ratio)) else str(int(round(ratio)))
