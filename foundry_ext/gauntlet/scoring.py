"""Score ICL items with any causal LM given as ``logits = forward(input_ids, attention_mask)``.

Pure torch. The definitions are LLM Foundry's metrics: language_modeling is correct when every
continuation token is the argmax; multiple_choice/schema pick the option with the lowest mean
cross-entropy over its continuation (first one on ties); generation is greedy decoding, then
normalized exact match (prefix) against the answer and its aliases (the decoding itself is in
:mod:`foundry_ext.gauntlet.generate`).

Speed comes from (1) length-sorted batches padded only to the longest row of the batch, not to
``max_seq_len``; (2) for multiple choice whose options share one context, the context is run
once and its KV cache reused by every option (``forward_cached``, where the model supports it);
(3) sequences identical across options are scored once.
"""
from __future__ import annotations

import re
import string
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from foundry_ext.gauntlet.prompts import Item

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(order: list[int], lengths: list[int], max_rows: int, max_tokens: int):
    """Split indices (sorted longest first) into batches bounded by rows and padded tokens."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1 > max_rows or (len(batch) + 1) * lengths[batch[0]] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def score_sequences(forward: Forward, seqs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                    device: torch.device | str = 'cpu', max_rows: int = 64,
                    max_tokens: int = 16384) -> tuple[list[float], list[bool]]:
    """For each (context, continuation): mean cross-entropy of the continuation and whether every
    continuation token is the model's argmax."""
    n = len(seqs)
    lengths = [len(c) + len(x) for c, x in seqs]
    order = sorted(range(n), key=lambda i: -lengths[i])
    ce = [0.0] * n
    exact = [False] * n
    for b in _batches(order, lengths, max_rows, max_tokens):
        T = lengths[b[0]]
        ids = torch.full((len(b), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(b), T), dtype=torch.bool)
        rows: list[int] = []
        pos: list[int] = []
        tgt: list[int] = []
        for r, i in enumerate(b):
            c, x = seqs[i]
            L = len(c) + len(x)
            ids[r, :L] = torch.tensor(c + x, dtype=torch.long)
            mask[r, :L] = True
            rows += [r] * len(x)
            pos += range(len(c) - 1, L - 1)
            tgt += x
        logits = forward(ids.to(device), mask.to(device))
        sel = logits[torch.tensor(rows, device=logits.device), torch.tensor(pos, device=logits.device)].float()
        tgt_t = torch.tensor(tgt, device=logits.device)
        tok_ce = F.cross_entropy(sel, tgt_t, reduction='none').cpu()
        hit = (sel.argmax(-1) == tgt_t).cpu()
        k = 0
        for i in b:
            m = len(seqs[i][1])
            ce[i] = float(tok_ce[k:k + m].mean()) if m else 0.0
            exact[i] = bool(hit[k:k + m].all())
            k += m
    return ce, exact


def score_items(forward: Forward, items: Sequence[Item], kind: str, pad_id: int, device='cpu',
                max_rows: int = 64, max_tokens: int = 16384,
                forward_cached: Optional[Callable] = None) -> list[dict]:
    """Per item: ``{'correct': 0/1, 'pred': int}`` (+ ``'ce'`` per option for choice tasks)."""
    if kind == 'language_modeling':
        _, ex = score_sequences(forward, [(it.contexts[0], it.continuations[0]) for it in items], pad_id,
                                device, max_rows, max_tokens)
        return [{'correct': int(e), 'pred': int(e)} for e in ex]
    if forward_cached is not None and _kv_worth_it(items):
        ces = score_shared_context(forward_cached, items, pad_id, device, max_rows, max_tokens)
    else:
        uniq: dict[tuple, int] = {}
        seqs: list[tuple[list[int], list[int]]] = []
        index: list[list[int]] = []
        for it in items:
            row: list[int] = []
            for c, x in zip(it.contexts, it.continuations):
                key = (tuple(c), tuple(x))
                if key not in uniq:
                    uniq[key] = len(seqs)
                    seqs.append((c, x))
                row.append(uniq[key])
            index.append(row)
        ce_u, _ = score_sequences(forward, seqs, pad_id, device, max_rows, max_tokens)
        ces = [[ce_u[j] for j in row] for row in index]
    out = []
    for it, ce in zip(items, ces):
        pred = min(range(len(ce)), key=lambda j: (ce[j], j))
        out.append({'correct': int(pred == it.gold), 'pred': pred, 'ce': ce})
    return out


def _kv_worth_it(items: Sequence[Item], min_group: int = 4) -> bool:
    """Shared-context scoring pays off when options share their context and enough questions have
    the same context length to fill a batch (contexts are never padded there)."""
    if not items or not all(len({tuple(c) for c in it.contexts}) == 1 and len(it.contexts[0]) > 1 for it in items):
        return False
    n_groups = len({len(it.contexts[0]) for it in items})
    return len(items) / n_groups >= min_group


@torch.no_grad()
def score_shared_context(forward_cached: Callable, items: Sequence[Item], pad_id: int, device='cpu',
                         max_rows: int = 64, max_tokens: int = 16384) -> list[list[float]]:
    """Choice tasks whose options share one context: run the context once per question (questions of
    equal context length batched together), then every option on top of its KV cache.

    ``forward_cached(ids, past)`` returns ``(logits, past)``; ``past`` can be expanded per option with
    :func:`expand_past`.
    """
    # The last context token is scored with the options (its logits predict the first option token).
    groups: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(len(it.contexts[0]), []).append(i)
    out: list[list[float]] = [[] for _ in items]
    for L, idxs in sorted(groups.items(), reverse=True):
        n_opt = max(len(items[i].continuations) for i in idxs)
        per = max(1, min(max_rows // max(n_opt, 1), max_tokens // max(L + 1, 1)))
        for s in range(0, len(idxs), per):
            b = idxs[s:s + per]
            ctx = torch.tensor([items[i].contexts[0][:-1] for i in b], dtype=torch.long, device=device)
            past = forward_cached(ctx, None)[1] if L > 1 else None
            rows, conts = [], []
            for r, i in enumerate(b):
                for x in items[i].continuations:
                    rows.append(r)
                    conts.append([items[i].contexts[0][-1]] + x)
            T = max(len(x) for x in conts)
            ids = torch.full((len(conts), T), pad_id, dtype=torch.long)
            for r, x in enumerate(conts):
                ids[r, :len(x)] = torch.tensor(x)
            rep = torch.tensor(rows, device=device)
            p = expand_past(past, rep) if past is not None else None
            logits = forward_cached(ids.to(device), p)[0].float()
            lp = F.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:].to(logits.device)
            tok_ce = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            k = 0
            for i in b:
                for x in items[i].continuations:
                    out[i].append(float(tok_ce[k, :len(x)].mean()))
                    k += 1
    return out


def expand_past(past, rows: torch.Tensor):
    """Index every tensor of a (nested tuple / Cache) KV cache along the batch dimension."""
    if isinstance(past, torch.Tensor):
        return past.index_select(0, rows)
    if isinstance(past, (tuple, list)):
        return type(past)(expand_past(p, rows) for p in past)
    if hasattr(past, 'reorder_cache'):
        import copy
        p = copy.deepcopy(past)
        p.reorder_cache(rows)
        return p
    raise TypeError(f'cannot expand a KV cache of type {type(past).__name__}')


# --- generation -------------------------------------------------------------------------------

def normalize_answer(answer: str) -> str:
    """LLM Foundry's (TriviaQA's) answer normalization."""
    exclude = set(string.punctuation + ''.join(['‘', '’', '´', '`']))
    text = answer.replace('_', ' ').lower()
    text = ''.join(ch if ch not in exclude else ' ' for ch in text)
    text = re.sub(r'\b(a|an|the)\b', ' ', text)
    return ' '.join(text.split()).strip()


def generation_correct(output: str, aliases: Sequence[str], stops: Sequence[str] = (), cot_delimiter: str = '',
                       do_normalization: bool = True) -> bool:
    final = output
    if stops:
        final = re.split('|'.join(stops), final)[0]
    if cot_delimiter:
        final = final.split(cot_delimiter)[-1]
    if do_normalization:
        final = normalize_answer(final)
        labels = {normalize_answer(a) for a in aliases}
    else:
        final = final.strip()
        labels = {a.strip() for a in aliases}
    return any(final.startswith(lab) for lab in labels)
