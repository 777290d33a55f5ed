"""Packing math and the SFT collator: positions, masks, LLM Foundry's packer replayed, auto ratio."""
import random

import pytest
import torch

from foundry_ext.finetune.collate import SFTCollator, padding_fraction
from foundry_ext.finetune.packing import (
    auto_packing_ratio,
    batch_slots,
    block_causal_mask,
    is_packed,
    pack_sizes,
    position_ids,
    simulate,
)

SEQ = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 0, 0, -1, -1, -1]])


def test_position_ids_restart_per_example():
    assert position_ids(SEQ).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 0, 1, 2]]
    assert is_packed(SEQ) and not is_packed(SEQ[1:]) and not is_packed(None)


def test_block_causal_mask():
    m = block_causal_mask(SEQ[:1])[0, 0] == 0
    assert m[4].tolist() == [False, False, False, True, True, False, False, False]  # example 1 sees itself
    assert m[5].tolist() == [False] * 5 + [True, False, False]
    assert not m.triu(1).any() and m.any(dim=1).all()  # causal, and no row fully masked (padding sees itself)
    w = block_causal_mask(torch.zeros(1, 6, dtype=torch.long), sliding_window=2)[0, 0] == 0
    assert w[5].tolist() == [False, False, False, False, True, True]


def test_pack_sizes_replays_llmfoundry_binpack():
    from llmfoundry.data.packing import BinPackCollator
    rng = random.Random(0)
    for trial in range(20):
        B, L = rng.choice([2, 4, 8]), rng.choice([32, 64, 128])
        packer = BinPackCollator(collator=lambda x: x, target_batch_size=B, max_seq_len=L, pad_token_id=0,
                                 padding_side='right', is_profiling=True)
        left = []
        for _ in range(6):
            sizes = [rng.randint(1, L) for _ in range(rng.randint(B // 2, 4 * B))]
            before = packer.n_packed_tokens
            packer._pack_trimmed_examples([{} for _ in sizes], sizes)
            out, left = pack_sizes(sizes, B, L, left)
            assert sum(out) == packer.n_packed_tokens - before, trial
            assert sorted(left, reverse=True) == [b for b, _ in packer._leftover_bins]


def test_auto_packing_ratio_and_slots():
    rng = random.Random(1)
    lengths = [rng.randint(20, 60) for _ in range(2000)]
    r = auto_packing_ratio(lengths, 8, 256)
    assert 3 <= r <= 256 / 40
    pad, waste = simulate(lengths, r, 8, 256)
    assert waste == 0 and pad < 0.25
    assert simulate(lengths, r * 1.5, 8, 256)[1] > 0
    assert auto_packing_ratio([300] * 100, 8, 256) == 1.0  # nothing fits twice
    unpacked = batch_slots(lengths, 8, 256)
    assert unpacked == sum(8 * (-(-max(lengths[k:k + 8]) // 8) * 8) for k in range(0, 2000, 8))
    assert sum(lengths) / batch_slots(lengths, 8, 256, r) > 0.9 > 0.7 > sum(lengths) / unpacked


def _ex(p, r):
    return {'turns': [{'input_ids': p, 'labels': r}]}


def test_collator_pads_packs_and_trims():
    exs = [_ex([5, 6, 7], [8, 9]), _ex([5, 6], [10]), _ex([5] * 10, [11, 12, 13]), _ex([5], [14])]
    c = SFTCollator(pad_id=0, eos_id=1, max_seq_len=32, train_on='all_assistant', batch_size=4)
    b = c(exs)
    assert b['input_ids'].shape == (4, 16)  # trimmed to the longest (14) rounded up to 8
    assert b['input_ids'][0, :6].tolist() == [5, 6, 7, 8, 9, 1] and b['labels'][0, :6].tolist() == [-100] * 3 + [8, 9, 1]
    assert (b['sequence_id'][0] == torch.tensor([0] * 6 + [-1] * 10)).all()
    p = SFTCollator(pad_id=0, eos_id=1, max_seq_len=16, train_on='all_assistant', batch_size=2, packing_ratio=2)(exs)
    assert p['input_ids'].shape[0] == 2 and is_packed(p['sequence_id'])
    assert int(p['attention_mask'].sum()) == 6 + 4 + 14 + 3  # every example, none cut
    for row in range(2):
        seq, pos, lab = p['sequence_id'][row], p['position_ids'][row], p['labels'][row]
        for k in range(int(seq.max()) + 1):
            idx = (seq == k).nonzero().flatten()
            assert pos[idx].tolist() == list(range(len(idx)))
            assert lab[idx[0]] == -100  # never predicted from the previous example
    assert padding_fraction(p) < padding_fraction(b)


def test_collator_skips_examples_without_a_trained_token():
    from foundry_ext.errors import UserError
    c = SFTCollator(pad_id=0, eos_id=1, max_seq_len=4, train_on='all_assistant', batch_size=2)
    assert c([_ex([5] * 6, [7]), _ex([5], [7])])['input_ids'].shape[0] == 1
    with pytest.raises(UserError, match='no example of a batch keeps a trained token within max_seq_len=4'):
        c([_ex([5] * 6, [7])])
