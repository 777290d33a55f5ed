"""Batched greedy generation over prompts of different lengths, with per-row early stopping.

Pure torch. Prompts are sorted by length and batched (bounded by rows and by padded tokens),
left-padded to the longest prompt of their batch, and decoded on the model's KV cache. The model
is called as ``step(ids, mask, past, use_cache) -> (last_logits, past)`` where ``mask`` covers the cached
tokens plus ``ids``: the adapter (:func:`foundry_ext.gauntlet.models.wrap`) turns the mask into
position ids the way HF ``generate`` does (RoPE, learned positions; ALiBi only needs the mask).

A row stops at eos (not returned), after ``max_new_tokens``, or when ``stop`` says its output can
no longer change the score (:class:`StopStrings`); a stopped row is dropped from the batch and from
its KV cache, so it costs nothing more, and the batch ends when every row has stopped.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

# step(ids (b, s), mask (b, past + s) bool, past or None, use_cache) -> (logits of the last position (b, V), past)
Step = Callable[[torch.Tensor, torch.Tensor, Any, bool], tuple[torch.Tensor, Any]]

_REGEX_META = set('.^$*+?{}[]\\|()')


class StopStrings:
    """When a row may stop for ``early_stopping_criteria``.

    LLM Foundry generates until eos or ``max_new_tokens`` (its batch stops early only when every row
    has produced a stop string) and then cuts the text at the first match of the stop strings joined
    into one regular expression. A row's score therefore cannot change once its text holds a stop
    string followed by at least one more character (the last character of a decoded text can still
    change: an incomplete UTF-8 byte sequence, a space removed by tokenizer clean-up). Only the last
    few tokens are decoded (a stop string of k UTF-8 bytes spans at most k tokens), so the check
    costs microseconds per row and step. Stop strings with regex syntax (whose first match could
    move when the text grows) never stop a row early: those rows run to eos / ``max_new_tokens``.
    """

    def __init__(self, stops: Sequence[str], tokenizer: Any):
        self.stops = [s for s in stops if s]
        self.literal = bool(self.stops) and not any(set(s) & _REGEX_META for s in self.stops)
        self.window = max((len(s.encode('utf-8')) for s in self.stops), default=0) + 3
        self.tok = tokenizer

    def __bool__(self) -> bool:
        return self.literal

    def __call__(self, ids: list[int]) -> bool:
        text = self.tok.decode(ids[-self.window:], skip_special_tokens=True).rstrip('\ufffd')[:-1]
        return any(s in text for s in self.stops)


def _batches(order: list[int], cost: list[int], max_rows: int, max_tokens: int):
    """Indices in ``order`` (longest first) cut into batches of at most ``max_rows`` rows and
    ``max_tokens`` padded tokens (rows x the longest row's cost)."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1 > max_rows or (len(batch) + 1) * cost[batch[0]] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def select_rows(past: Any, rows: torch.Tensor) -> Any:
    """Keep only ``rows`` (batch indices) of a KV cache: nested tuples/lists of tensors (MPT, legacy
    HF) or a transformers ``Cache``."""
    if past is None:
        return None
    if isinstance(past, torch.Tensor):
        return past.index_select(0, rows.to(past.device))
    if isinstance(past, (tuple, list)):
        return type(past)(select_rows(p, rows) for p in past)
    if hasattr(past, 'batch_select_indices'):  # transformers DynamicCache: in place
        past.batch_select_indices(rows)
        return past
    if hasattr(past, 'reorder_cache'):
        past.reorder_cache(rows)
        return past
    raise TypeError(f'cannot select rows of a KV cache of type {type(past).__name__}')


@torch.no_grad()
def greedy_generate(step: Step, prompts: Sequence[list[int]], max_new_tokens: int, eos_id: Optional[int],
                    pad_id: int, device: Any = 'cpu', max_rows: int = 32, max_tokens: int = 16384,
                    stop: Optional[Callable[[list[int]], bool]] = None,
                    use_cache: bool = True) -> list[list[int]]:
    """Greedy continuation of every prompt (eos ends a row and is not returned).

    ``use_cache=False`` re-runs the whole (padded) sequence at every step, for models without a
    usable KV cache.
    """
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens < 1 or not prompts:
        return out
    n = len(prompts)
    order = sorted(range(n), key=lambda i: (-len(prompts[i]), i))
    cost = [len(p) + max_new_tokens for p in prompts]
    for batch in _batches(order, cost, max(1, max_rows), max_tokens):
        _decode(step, [prompts[i] for i in batch], batch, out, max_new_tokens, eos_id, pad_id, device, stop,
                use_cache)
    return out


def _decode(step: Step, prompts: list[list[int]], rows: list[int], out: list[list[int]], max_new: int,
            eos_id: Optional[int], pad_id: int, device: Any, stop: Optional[Callable[[list[int]], bool]],
            use_cache: bool) -> None:
    L = max(len(p) for p in prompts)
    B = len(prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, L - len(p):] = True
    ids, mask = ids.to(device), mask.to(device)
    feed, past = ids, None
    rows = list(rows)
    for t in range(max_new):
        if use_cache:
            logits, past = step(feed, mask, past, True)
        else:
            logits, _ = step(ids, mask, None, False)
        nxt = logits.argmax(-1)
        keep = []
        for r, tok in enumerate(nxt.tolist()):
            if eos_id is not None and tok == eos_id:
                continue
            o = out[rows[r]]
            o.append(tok)
            if stop is not None and stop(o):
                continue
            keep.append(r)
        if not keep or t == max_new - 1:
            return
        one = torch.ones((B, 1), dtype=torch.bool, device=mask.device)
        mask = torch.cat([mask, one], dim=1)
        if len(keep) < B:
            sel = torch.tensor(keep, dtype=torch.long, device=nxt.device)
            nxt, mask = nxt.index_select(0, sel), mask.index_select(0, sel.to(mask.device))
            if use_cache:
                past = select_rows(past, sel)
            else:
                ids = ids.index_select(0, sel.to(ids.device))
            rows = [rows[r] for r in keep]
            B = len(keep)
        feed = nxt[:, None].to(ids.device)
        if not use_cache:
            ids = torch.cat([ids, feed], dim=1)
