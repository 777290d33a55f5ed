"""A plain LLM Foundry install resolves our components by name (pyproject entry points)."""
import pytest

from conftest import TINY_SEQ


def test_registry_resolves_entry_points():
    from llmfoundry import registry

    from foundry_ext.data.corpus_text import build_corpus_dataloader
    from foundry_ext.runs.metrics import MetricsJsonlLogger
    assert registry.dataloaders.get('corpus_text') is build_corpus_dataloader
    assert registry.loggers.get('metrics_jsonl') is MetricsJsonlLogger


def test_llmfoundry_builds_corpus_loader(tiny_tokenizer, tiny_mds):
    from llmfoundry.data.dataloader import build_dataloader
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    spec = build_dataloader({'name': 'corpus_text', 'num_workers': 0,
                             'dataset': {'root': str(tiny_mds), 'split': 'val', 'max_seq_len': TINY_SEQ,
                                         'domains': ['records', 'arithmetic']}},
                            tok, device_batch_size=4)
    assert spec.dataloader.prefetch_factor is None and spec.dataloader.persistent_workers is False
    batch = next(iter(spec.dataloader))
    assert batch['input_ids'].shape == (4, TINY_SEQ)
    import json
    stats = json.loads((tiny_mds / 'stats.json').read_text())['domains']
    assert spec.dataloader.dataset.num_samples == stats['records']['val']['samples'] + \
        stats['arithmetic']['val']['samples']


def test_corpus_loader_bad_inputs(tiny_mds, tmp_path):
    from foundry_ext.data.corpus_text import corpus_streams, loader_kwargs
    from foundry_ext.errors import UserError
    with pytest.raises(UserError, match='does not exist'):
        corpus_streams(tmp_path / 'x', 'train')
    with pytest.raises(UserError, match=r"\['poetry'\] have no train split"):
        corpus_streams(tiny_mds, 'train', ['poetry'])
    with pytest.raises(UserError, match='num_workers'):
        loader_kwargs(-1, None, None, None)
    assert loader_kwargs(2, False, None, None)['prefetch_factor'] == 2
