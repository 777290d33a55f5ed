"""Typed options of the gauntlet (eval yaml, callback, icl task entries), has_categories input errors,
and the results cache keyed by the model's content (not its file name)."""
import os

import pytest
import torch

from foundry_ext.errors import UserError
from foundry_ext.gauntlet.config import GauntletCallbackConfig, parse_eval_config
from foundry_ext.gauntlet.tasks import load_examples, task_from_cfg
from foundry_ext.validation import ConfigError

from conftest import write_jsonl  # noqa: E402

OK = {'model': {'hf_path': 'x'}, 'icl_tasks': 'tasks.yaml'}


@pytest.mark.parametrize('bad,msg', [
    ({'icl_task': []}, "unknown eval config key 'icl_task'; did you mean 'icl_tasks'?"),
    ({'compare': {'hf_pth': 'y'}}, "unknown eval config key 'compare.hf_pth'; did you mean 'hf_path'?"),
    ({'device_eval_batch_size': 'x'}, "eval config: device_eval_batch_size must be an integer, got str 'x'"),
    ({'device_eval_batch_size': 0}, 'eval config: device_eval_batch_size must be an integer >= 1, got 0'),
    ({'kv_cache': 1}, 'eval config: kv_cache must be true/false, got int 1'),
    ({'precision': 'bf16'}, "eval config key 'precision' must be one of fp32, amp_bf16, amp_fp16, got 'bf16'"),
    ({'model': {'hf_path': 'x', 'run_dir': 'y'}}, 'model: give exactly one of checkpoint'),
    ({'model': None}, "eval config needs 'model'"),
])
def test_eval_config_problems_one_line_each(bad, msg):
    with pytest.raises(ConfigError) as e:
        parse_eval_config({**OK, **bad})
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(msg)


def test_eval_config_parses_typed():
    cfg = parse_eval_config({**OK, 'compare': {'checkpoint': 'a.pt', 'name': 'base'}, 'limit': 5,
                             'device_eval_batch_size': 8})
    assert cfg.model.hf_path == 'x' and cfg.compare.checkpoint == 'a.pt' and cfg.compare.name == 'base'
    opts = cfg.run_options()
    assert opts.batch_rows == 8 and opts.bootstrap_samples == 1000 and opts.kv_cache
    assert parse_eval_config({**OK, 'compare': 'runs/a/results.json'}).compare == 'runs/a/results.json'


def test_callback_options_checked_before_training(tmp_path):
    from foundry_ext.config.validate import OWNERS, check_owned
    assert ('callback', 'gauntlet') in OWNERS
    tasks = tmp_path / 'tasks.yaml'
    tasks.write_text('icl_tasks: []\n')
    cases = [({'icl_tasks': str(tasks), 'intervall': '5ba'}, "callbacks.gauntlet.intervall; did you mean 'interval'?"),
             ({'icl_tasks': str(tasks), 'interval': '5ep'},
              "callbacks.gauntlet: interval must be in batches (e.g. 100ba), got '5ep'"),
             ({'icl_tasks': str(tmp_path / 'nope.yaml')}, f"callbacks.gauntlet: icl_tasks file {tmp_path / 'nope.yaml'}"),
             ({'icl_tasks': str(tasks), 'eval_gauntlet': {'categories': 3}},
              'callbacks.gauntlet: eval_gauntlet must be a mapping with a list of categories'),
             ({'interval': 10}, 'callbacks.gauntlet: icl_tasks is required')]
    for opts, msg in cases:
        problems: list = []
        check_owned('callback', 'gauntlet', opts, 'callbacks.gauntlet', problems)
        assert len(problems) == 1 and msg in problems[0], (opts, problems)
    problems = []
    cfg = check_owned('callback', 'gauntlet', {'icl_tasks': str(tasks), 'interval': 50}, 'callbacks.gauntlet', problems)
    assert not problems and isinstance(cfg, GauntletCallbackConfig) and cfg.interval_batches == 50


def test_icl_task_entry_and_category_errors(tmp_path):
    base = {'label': 't', 'icl_task_type': 'multiple_choice', 'num_fewshot': [2]}
    with pytest.raises(UserError, match="unknown key 'continuation_delimeter'; did you mean 'continuation_delimiter'"):
        task_from_cfg({**base, 'dataset_uri': 'x.jsonl', 'continuation_delimeter': ' '})
    with pytest.raises(UserError, match='has_categories must be true or false'):
        task_from_cfg({**base, 'dataset_uri': 'x.jsonl', 'has_categories': 'yes'})
    row = {'query': 'q', 'choices': ['a', 'b'], 'gold': 0}
    f = write_jsonl(tmp_path / 'c.jsonl', [{**row, 'category': 'a'}, row])
    with pytest.raises(UserError, match=r"c.jsonl line 2: no 'category' \(has_categories: true needs one"):
        load_examples(task_from_cfg({**base, 'dataset_uri': f, 'has_categories': True}))
    from foundry_ext.gauntlet.prompts import build_task_items
    f = write_jsonl(tmp_path / 'd.jsonl', [{**row, 'category': c} for c in 'aaaabbbbbb'])
    t = task_from_cfg({**base, 'dataset_uri': f, 'has_categories': True, 'limit': 3})
    ex = load_examples(t)
    assert len(ex) == 6  # the first `limit` examples of every category
    with pytest.raises(UserError, match="icl task 't' category 'a': num_fewshot 3 is larger than the 2 other"):
        build_task_items(t, ex, None, 3, 64)


def _fake_composer_checkpoint(model, path):
    """What load_composer_checkpoint reads: the weights and the HF config stored by Composer."""
    torch.save({'state': {'model': {f'model.{k}': v for k, v in model.state_dict().items()},
                          'integrations': {'huggingface': {'model': {'config': {'content': model.config.to_dict()}}}}}},
               path)


def test_results_cache_keyed_by_model_content(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from foundry_ext.gauntlet.config import ModelSpec, RunOptions
    from foundry_ext.gauntlet.models import load_model
    from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet

    from conftest import icl_files
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=16, n_layer=1, n_head=2))
    ck = tmp_path / 'checkpoints'
    ck.mkdir()
    _fake_composer_checkpoint(model, ck / 'ep0-ba8-rank0.pt')
    os.symlink('ep0-ba8-rank0.pt', ck / 'latest-rank0.pt')
    _fake_composer_checkpoint(model, tmp_path / 'copy.pt')
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 5] += 1e-3  # one weight changed
    _fake_composer_checkpoint(model, tmp_path / 'changed.pt')
    load = lambda p: load_model(ModelSpec(checkpoint=str(p), tokenizer=str(tiny_tokenizer)), 'cpu')  # noqa: E731
    a, b, c, d = load(ck / 'ep0-ba8-rank0.pt'), load(ck / 'latest-rank0.pt'), load(tmp_path / 'copy.pt'), \
        load(tmp_path / 'changed.pt')
    assert a.model_hash == b.model_hash == c.model_hash != d.model_hash
    files = icl_files(tmp_path)
    tasks, _ = parse_tasks([{'label': 'mc', 'dataset_uri': files['mc'], 'icl_task_type': 'multiple_choice',
                             'num_fewshot': [0]}])
    opts = RunOptions(cache_dir=str(tmp_path / 'cache'), bootstrap_samples=0)
    r1 = run_gauntlet(a, tasks, None, opts, log=lambda s: None)
    r2 = run_gauntlet(b, tasks, None, opts, log=lambda s: None)  # the symlink: one cache entry
    assert not r1.benchmarks['mc/0-shot'].cached and r2.benchmarks['mc/0-shot'].cached
    assert r1.benchmarks['mc/0-shot'].correct == r2.benchmarks['mc/0-shot'].correct
    assert len(list((tmp_path / 'cache').iterdir())) == 1
