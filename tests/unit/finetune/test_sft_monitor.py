"""sft_monitor: the counts behind ft/* metrics and its option checks."""
import pytest
import torch

from foundry_ext import validation
from foundry_ext.finetune.config import SFTMonitorConfig


def test_batch_counts_packed_and_padded():
    from foundry_ext.finetune.callback import batch_counts
    labels = torch.tensor([[-100, -100, 5, 6, -100, 7, -100, -100],
                           [-100, 3, 4, -100, -100, -100, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, -1, -1], [0, 0, 0, -1, -1, -1, -1, -1]])
    trained, real, slots, examples, rows = batch_counts({'labels': labels, 'attention_mask': mask,
                                                        'sequence_id': seq}).tolist()
    assert (trained, real, slots, examples, rows) == (5, 9, 16, 3, 2)
    # without sequence_id every row is one example; the first label position never counts (it is shifted out)
    labels[0, 0] = 9
    assert batch_counts({'labels': labels, 'attention_mask': mask}).tolist() == [5, 9, 16, 2, 2]


def test_monitor_options():
    assert validation.parse(SFTMonitorConfig, {'log_interval': 5}, 'callbacks.sft_monitor').log_interval == 5
    with pytest.raises(validation.ConfigError, match='callbacks.sft_monitor: log_interval must be an integer >= 1'):
        validation.parse(SFTMonitorConfig, {'log_interval': 0}, 'callbacks.sft_monitor')
    with pytest.raises(validation.ConfigError, match="log_intervall; did you mean 'log_interval'"):
        validation.parse(SFTMonitorConfig, {'log_intervall': 5}, 'callbacks.sft_monitor')
