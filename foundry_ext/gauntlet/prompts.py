"""Prompt construction and tokenization identical to LLM Foundry 0.22's ICL datasets.

Mirrors ``llmfoundry/eval/datasets/in_context_learning_evaluation.py``: the same few-shot
sampler driven by one ``random.Random(fewshot_random_seed)`` walked over the examples in order,
the same delimiters, the same ``rstrip`` of the context, the same prefix space before a
continuation for GPT-2-style tokenizers, and the same left-trimming to ``max_seq_len``. What
comes out is token ids, not padded tensors: the scorer pads per length-sorted batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from foundry_ext.errors import UserError
from foundry_ext.gauntlet.tasks import RAW_KEY, TaskSpec, check_fewshot, split_categories

# LLM Foundry: allow slightly more tokens than the longest chain-of-thought answer.
_MAX_ANSWER_BUFFER_LENGTH = 10


@dataclass
class Item:
    """One question: ``contexts[i] + continuations[i]`` is option i's token sequence.

    language_modeling has one option; multiple_choice/schema have one per choice; generation has
    ``contexts[0]`` only, plus ``aliases`` and ``max_new_tokens``.
    """
    contexts: list[list[int]]
    continuations: list[list[int]]
    gold: int = 0
    aliases: list[str] = field(default_factory=list)
    max_new_tokens: int = 0


def fewshot_sample_idxs(dataset_size: int, num_fewshot: int, example_idx: int, rng: random.Random) -> set[int]:
    """LLM Foundry's ``get_fewshot_sample_idxs`` (same rng calls, same set => same iteration order)."""
    num_fewshot = min(dataset_size - 1, num_fewshot)
    idxs = set(rng.sample(range(0, dataset_size), num_fewshot))
    if example_idx in idxs:
        idxs.remove(example_idx)
        if len(idxs) >= dataset_size - 1:
            return idxs
        repl = rng.choice(range(0, dataset_size))
        while repl in idxs or repl == example_idx:
            repl = rng.choice(range(0, dataset_size))
        idxs.add(repl)
    return idxs


def needs_prefix_space(tokenizer) -> bool:
    return len(tokenizer(' a', add_special_tokens=False)['input_ids']) == 1


def trim_context(ctx: list[int], cont: list[int], max_seq_len: int, label: str) -> list[int]:
    if len(cont) + len(ctx) > max_seq_len:
        keep = max_seq_len - len(cont)
        if keep < 0:
            raise UserError(f"icl task '{label}': a continuation of {len(cont)} tokens is longer than "
                            f'max_seq_len {max_seq_len}; raise max_seq_len or shorten the answers')
        ctx = ctx[-keep:]  # as LLM Foundry (keep == 0 keeps everything, like theirs)
    return ctx


class _Builder:
    def __init__(self, task: TaskSpec, examples: list[dict], tokenizer):
        self.t, self.ex, self.tok = task, examples, tokenizer
        self.prefix_space = needs_prefix_space(tokenizer)
        ty = task.icl_task_type
        self.context_key = {'multiple_choice': 'query', 'schema': 'context_options'}.get(ty, 'context')
        self.has_cot = ty == 'generation_task_with_answers' and any('chain_of_thought' in e for e in examples)

    # --- answers -----------------------------------------------------------------------------
    def answer(self, ex: dict, in_context: bool) -> str:
        ty = self.t.icl_task_type
        if ty == 'multiple_choice':
            return ex['choices'][ex['gold']]
        if ty == 'generation_task_with_answers':
            if self.has_cot:
                return f"{ex.get('chain_of_thought', '')}{self.t.cot_delimiter}{ex['answer']}"
            return ex['answer']
        cont = ex['continuation']
        if self.prefix_space and not cont.startswith(' ') and not in_context:
            cont = f' {cont}'
        return cont

    # --- contexts ----------------------------------------------------------------------------
    def context(self, ex: dict, preceding: str, add_answer: bool) -> str:
        t = self.t
        if t.icl_task_type == 'schema':
            c = ex['context_options'][ex['gold']]
            if preceding:
                c = f'{t.example_delimiter}{c}'
            return f"{t.prelimiter}{c}{t.continuation_delimiter}{ex['continuation']}"
        c = f'{t.prelimiter}{ex[self.context_key]}'
        if preceding:
            c = f'{t.example_delimiter}{c}'
        c = f'{c}{t.continuation_delimiter}'
        if add_answer:
            c = f'{c}{self.answer(ex, in_context=True)}'
        return c

    def fewshot_prompt(self, shot: int, idx: int, rng: random.Random) -> str:
        text = self.t.prompt_string
        if shot > 0:
            for j in fewshot_sample_idxs(len(self.ex), shot, idx, rng):
                text += self.context(self.ex[j], text, add_answer=True)
        return text

    def schema_contexts(self, ex: dict, preceding: str) -> list[str]:
        t = self.t
        if preceding:
            cd = t.continuation_delimiter.rstrip() if t.strip_dataset else t.continuation_delimiter
            return [f'{t.prelimiter}{t.example_delimiter}{c}{cd}' for c in ex['context_options']]
        return [f'{t.prelimiter}{c}' for c in ex['context_options']]

    def with_prefix(self, s: str) -> str:
        return f' {s}' if self.prefix_space and not s.startswith(' ') else s

    # --- all items ---------------------------------------------------------------------------
    def build(self, shot: int, max_seq_len: int) -> list[Item]:
        t, tok = self.t, self.tok
        ty = t.icl_task_type
        rng = random.Random(t.fewshot_random_seed)
        preambles, texts = [], []   # texts: per example, the strings encoded without special tokens
        for i, ex in enumerate(self.ex):
            pre = self.fewshot_prompt(shot, i, rng)
            preambles.append(pre)
            if ty == 'schema':
                texts.append(self.schema_contexts(ex, pre) + [self.with_prefix(ex['continuation'])])
            else:
                ctxt = self.context(ex, pre, add_answer=False)
                if t.strip_dataset:
                    ctxt = ctxt.rstrip()  # LLM Foundry: a prompt ending in a space degenerates
                if ty == 'multiple_choice':
                    texts.append([ctxt] + [self.with_prefix(c) for c in ex['choices']])
                elif ty == 'language_modeling':
                    texts.append([ctxt, self.answer(ex, in_context=False)])
                else:
                    texts.append([ctxt])
        # Batched tokenization: one call for all preambles, one for all other strings.
        pre_ids = tok(preambles)['input_ids'] if preambles else []
        flat = [s for ts in texts for s in ts]
        flat_ids = tok(flat, add_special_tokens=False)['input_ids'] if flat else []
        eos = tok.eos_token_id
        items, k = [], 0
        max_answer = self._max_answer_len() if ty == 'generation_task_with_answers' else 0
        for i, ex in enumerate(self.ex):
            head = list(pre_ids[i])
            if eos is not None and len(head) > 1 and head[-1] == eos:
                head = head[:-1]
            ids = flat_ids[k:k + len(texts[i])]
            k += len(texts[i])
            if ty == 'multiple_choice':
                ctx = head + ids[0]
                conts = [list(c) for c in ids[1:]]
                items.append(Item([trim_context(ctx, c, max_seq_len, t.label) for c in conts], conts, ex['gold']))
            elif ty == 'schema':
                cont = list(ids[-1])
                ctxs = [trim_context(head + c, cont, max_seq_len, t.label) for c in ids[:-1]]
                items.append(Item(ctxs, [cont] * len(ctxs), ex['gold']))
            elif ty == 'language_modeling':
                cont = list(ids[1])
                items.append(Item([trim_context(head + ids[0], cont, max_seq_len, t.label)], [cont]))
            else:
                seq_len = max(max_seq_len, max_answer)
                ctx = trim_context(head + ids[0], [], seq_len - max_answer, t.label)
                aliases = sorted(set([ex['answer']] + list(ex.get('aliases', []))))
                items.append(Item([ctx], [], 0, aliases, t.max_new_tokens or max(max_answer, 1)))
        return items

    def _max_answer_len(self) -> int:
        """Longest answer/alias in tokens (special tokens included), measured on the strings as in
        the file, before ``strip_dataset`` (LLM Foundry measures before it strips)."""
        m = 0
        for ex in self.ex:
            raw = {**ex, **ex.get(RAW_KEY, {})}
            for a in [raw['answer']] + list(ex.get('aliases', [])):
                r = f"{raw.get('chain_of_thought', '')}{self.t.cot_delimiter}{a}" if self.has_cot else a
                m = max(m, len(self.tok(r)['input_ids']))
        return m + (_MAX_ANSWER_BUFFER_LENGTH if self.t.cot_delimiter else 0)


def build_items(task: TaskSpec, examples: list[dict], tokenizer, shot: int, max_seq_len: int) -> list[Item]:
    """Token ids for every example of ``task`` at ``shot`` shots, exactly as LLM Foundry builds them."""
    return _Builder(task, examples, tokenizer).build(shot, max_seq_len)


def build_task_items(task: TaskSpec, examples: list[dict], tokenizer, shot: int,
                     max_seq_len: int) -> tuple[list[Item], list[tuple[str | None, int]]]:
    """Every item of ``task`` at ``shot`` shots and its ``[(category, n items)]`` in item order.

    With ``has_categories`` each category is its own dataset, as LLM Foundry builds one dataloader
    per category: few-shot examples come from the same category, drawn by a fresh
    ``Random(fewshot_random_seed)``, and a generation category sizes its own ``max_new_tokens``.
    """
    items: list[Item] = []
    groups: list[tuple[str | None, int]] = []
    for cat, exs in split_categories(task, examples):
        check_fewshot(task, shot, len(exs), cat)
        items += build_items(task, exs, tokenizer, shot, max_seq_len)
        groups.append((cat, len(exs)))
    return items, groups


def describe(item: Item, tokenizer) -> dict[str, Any]:
    """Human-readable view of one item (for debugging and the report's sample prompts)."""
    return {'context': tokenizer.decode(item.contexts[0]),
            'options': [tokenizer.decode(c) for c in item.continuations], 'gold': item.gold}
