"""Batched generation over mixed prompt lengths (left padding, KV cache, per-row stopping) gives, row
by row, exactly what decoding each prompt alone (no padding at all) gives: GPT-2 (learned absolute
positions), LLM Foundry's MPT with RoPE / ALiBi / learned positions, and our foundry_mpt attention
(sdpa) with RoPE and ALiBi."""
import random
from collections import Counter

import pytest
import torch

from foundry_ext.gauntlet.generate import StopStrings, greedy_generate, select_rows
from foundry_ext.gauntlet.models import wrap

MODELS = ['gpt2', 'mpt-rope', 'mpt-alibi', 'mpt-learned', 'foundry-rope', 'foundry-alibi']


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


def build(which: str, vocab: int):
    torch.manual_seed(7)
    if which == 'gpt2':
        from transformers import GPT2Config, GPT2LMHeadModel
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                          initializer_range=0.3))
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    kind, pos = which.split('-')
    attn = {'rope': {'rope': True, 'rope_impl': 'hf'}, 'alibi': {'alibi': True}, 'learned': {}}[pos]
    init = {'name': 'baseline_', 'init_std': 0.3}  # large random weights: outputs that differ per prompt
    if kind == 'foundry':
        from foundry_ext.models.mpt import FoundryMPTConfig
        cfg = FoundryMPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, vocab_size=vocab,
                               init_device='cpu', attn_config={'attn_impl': 'sdpa', **attn}, init_config=init)
    else:
        cfg = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, vocab_size=vocab, init_device='cpu',
                        attn_config={'attn_impl': 'torch', **attn}, init_config=init)
    return MPTForCausalLM(cfg)


@pytest.mark.parametrize('which', MODELS)
def test_batched_generation_equals_each_prompt_alone(tok, which):
    lm = wrap(build(which, len(tok)), tok, which, 128, 'test', 'cpu')
    rng = random.Random(1)
    prompts = [[rng.randrange(3, len(tok)) for _ in range(rng.randrange(1, 30))] for _ in range(11)]
    alone = [greedy_generate(lm.step, [p], 10, None, lm.pad_id, max_rows=1)[0] for p in prompts]
    assert all(len(o) == 10 for o in alone)
    for cache in (True, False):  # left-padded batches of mixed lengths, on the KV cache and without
        assert greedy_generate(lm.step, prompts, 10, None, lm.pad_id, max_rows=4, use_cache=cache) == alone
    # rows that stop (at eos: the output token that cuts the outputs most diversely; at a stop rule)
    # leave the batch and its KV cache
    def cut(o, eos):
        return o[:o.index(eos)] if eos in o else o

    eos = max(Counter(t for o in alone for t in o), key=lambda e: (len({len(cut(o, e)) for o in alone}), -e))
    got = greedy_generate(lm.step, prompts, 10, eos, lm.pad_id, max_rows=6)
    assert got == [cut(o, eos) for o in alone] and len({len(o) for o in got}) >= 2

    def stop(ids):  # a row stops after its first token divisible by 3
        return ids[-1] % 3 == 0

    def cut3(o):
        return next((o[:k + 1] for k, x in enumerate(o) if x % 3 == 0), o)

    got = greedy_generate(lm.step, prompts, 10, None, lm.pad_id, max_rows=6, stop=stop)
    assert got == [cut3(o) for o in alone]


def test_rows_and_tokens_bound_the_batches(tok):
    lm = wrap(build('mpt-rope', len(tok)), tok, 'm', 128, 'test', 'cpu')
    calls = []

    def counting(ids, mask, past, use_cache):  # records the prefill calls
        if past is None:
            calls.append(tuple(mask.shape))
        return lm.step(ids, mask, past, use_cache)

    prompts = [[5] * n for n in (3, 9, 4, 20, 7)]
    greedy_generate(counting, prompts, 2, None, lm.pad_id, max_rows=2, max_tokens=1000)
    assert calls == [(2, 20), (2, 7), (1, 3)]  # longest first, two rows, padded to the batch's longest
    calls.clear()
    greedy_generate(counting, prompts, 2, None, lm.pad_id, max_rows=8, max_tokens=50)
    assert calls == [(2, 20), (3, 7)]  # at most 50 padded tokens: 2 x (20 + 2), 3 x (7 + 2)


def test_stop_strings_rule(tok):
    ids = lambda s: tok(s, add_special_tokens=False)['input_ids']  # noqa: E731
    stop = StopStrings(['\n\n', 'Question:'], tok)
    assert stop and not stop(ids('the answer is 4'))
    assert not stop(ids('4\n\n'))          # the stop must be followed by one more character ...
    assert stop(ids('4\n\nQ'))            # ... which can no longer change where the text is cut
    assert stop(ids('long text before it, 4 Question: next'))
    assert not StopStrings(['a.c'], tok)  # regex syntax: the first match could still move, never stop early
    assert not StopStrings([], tok)


def test_select_rows_of_every_cache_layout():
    from transformers import DynamicCache
    t = torch.arange(24.).view(3, 2, 4)
    legacy = ((t, t + 1), (t + 2, t + 3))
    got = select_rows(legacy, torch.tensor([2, 0]))
    assert torch.equal(got[1][0], (t + 2)[[2, 0]]) and isinstance(got, tuple)
    dc = DynamicCache.from_legacy_cache(tuple((k[:, None], v[:, None]) for k, v in legacy))
    got = select_rows(dc, torch.tensor([1]))
    assert got.key_cache[0].shape[0] == 1 and torch.equal(got.key_cache[0][0, 0], t[1])
    with pytest.raises(TypeError):
        select_rows(object(), torch.tensor([0]))
