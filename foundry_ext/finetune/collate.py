"""The SFT collator: tokenized examples -> a training batch, packed or padded.

Each example (LLM Foundry ``turns``) becomes ``(input_ids, labels)`` with
:func:`foundry_ext.prep.sft_examples.stitch` for the ``train_on`` choice, truncated to
``max_seq_len``. Without packing the rows are right-padded; with packing LLM Foundry's
``BinPackCollator`` (first-fit-decreasing, leftovers carried to the next batch) packs
``packing_ratio x batch`` examples into ``batch`` rows. Every batch carries ``sequence_id``
(example index in its row, -1 on padding) and ``position_ids`` restarted per example; the
model uses them to keep examples apart (MPT: ``attn_uses_sequence_id``; HF: ``foundry_hf_causal_lm``).
With ``trim_padding`` the batch is cut after its longest row (rounded up to a multiple of 8).

Labels follow LLM Foundry: aligned with ``input_ids``, the model shifts them, ``-100`` is not
trained. The first label of every packed example is -100 (it would be predicted from the
previous example's last token).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from foundry_ext.errors import UserError
from foundry_ext.finetune.packing import position_ids
from foundry_ext.prep.sft_examples import IGNORE, as_turns, stitch, trained_count

log = logging.getLogger('foundry_ext')

__all__ = ['SFTCollator', 'padding_fraction']


class SFTCollator:
    def __init__(self, pad_id: int, eos_id: Optional[int], max_seq_len: int, train_on: str,
                 batch_size: int, packing_ratio: Optional[float] = None, trim_padding: bool = True,
                 multiple_of: int = 8):
        self.pad_id, self.eos_id = int(pad_id), eos_id
        self.max_seq_len, self.train_on = int(max_seq_len), train_on
        self.trim_padding, self.multiple_of = trim_padding, multiple_of
        self.packer = None
        if packing_ratio is not None and packing_ratio > 1:
            from llmfoundry.data.packing import BinPackCollator
            self.packer = BinPackCollator(collator=self._pad, target_batch_size=batch_size,
                                          max_seq_len=self.max_seq_len, pad_token_id=self.pad_id,
                                          padding_side='right')
        self._warned = False

    def rows(self, examples: list[Any]) -> list[tuple[list[int], list[int]]]:
        out = []
        for ex in examples:
            ids, labels = stitch(as_turns(ex), self.train_on, self.eos_id)
            ids, labels = ids[:self.max_seq_len], labels[:self.max_seq_len]
            if trained_count(labels) == 0:
                if not self._warned:
                    log.warning('sft: an example has no trained token left within max_seq_len=%d and is skipped '
                                '(its data was prepared for a longer max_seq_len?)', self.max_seq_len)
                    self._warned = True
                continue
            out.append((ids, labels))
        if not out:
            raise UserError(f'sft: no example of a batch keeps a trained token within max_seq_len={self.max_seq_len}; '
                            'rebuild the MDS (`foundry-ext prep sft`) with the --max_seq_len you train with')
        return out

    def _pad(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        n, s = len(rows), self.max_seq_len
        ids = torch.full((n, s), self.pad_id, dtype=torch.long)
        labels = torch.full((n, s), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, s), dtype=torch.long)
        for r, (i, lab) in enumerate(rows):
            ids[r, :len(i)] = torch.tensor(i, dtype=torch.long)
            labels[r, :len(lab)] = torch.tensor(lab, dtype=torch.long)
            mask[r, :len(i)] = 1
        return {'input_ids': ids, 'labels': labels, 'attention_mask': mask, 'sequence_id': mask - 1}

    def __call__(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        batch = self._pad(self.rows(examples))
        if self.packer is not None:
            batch = self.packer.pack(batch)
        batch['position_ids'] = position_ids(batch['sequence_id'])
        if self.trim_padding:
            longest = int(batch['attention_mask'].sum(dim=1).max())
            keep = min(self.max_seq_len, -(-longest // self.multiple_of) * self.multiple_of)
            batch = {k: v[:, :keep].contiguous() for k, v in batch.items()}
        return batch


def padding_fraction(batch: dict[str, torch.Tensor]) -> float:
    m = batch['attention_mask']
    return 1.0 - float(m.sum()) / m.numel()
