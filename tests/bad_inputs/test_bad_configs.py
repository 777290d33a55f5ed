"""Config mistakes: one line each, before LLM Foundry / Composer are imported."""
import copy
import subprocess
import sys

import pytest
from bad_helpers import assert_one_line, only_problem, problems, run_cli

from conftest import ROOT, TINY_SEQ, TINY_VOCAB, tree_digest

YAML = ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml'


@pytest.fixture(scope='module')
def base_overrides(tiny_tokenizer, tiny_mds):
    return [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={tiny_mds}',
            f'model.vocab_size={TINY_VOCAB}', f'variables.max_seq_len={TINY_SEQ}']


@pytest.fixture
def cfg(base_overrides):
    from foundry_ext.config.load import load
    return load(YAML, base_overrides)


def load_with(base_overrides, *more):
    from foundry_ext.config.load import load
    return load(YAML, [*base_overrides, *more])


def test_valid_config_has_no_problem(cfg):
    assert problems(cfg) == []


@pytest.mark.parametrize('override,needles', [
    ('model=[1,2]', ('model must be a mapping, got list [1, 2]',)),
    ('optimizer=[adamw,1]', ('optimizer must be a mapping',)),
    ('optimizer.lr=abc', ("optimizer.lr must be a number, got str 'abc'",)),
    ('max_duration=0ba', ("max_duration must be > 0, got '0ba'",)),
    ('max_duration=ten', ("max_duration 'ten' is not a duration",)),
    ('eval_interval=-3ba', ('eval_interval must be > 0',)),
    ('optimizer.lr=-0.001', ('optimizer.lr must be >= 0, got -0.001',)),
    ('optimizer.betas=[0.9,1.5]', ('optimizer.betas must be two numbers in [0, 1)',)),
    ('optimizer.weight_decay=-1', ('optimizer.weight_decay must be >= 0',)),
    ('device_eval_batch_size=0', ('device_eval_batch_size must be > 0',)),
    ('device_train_microbatch_size=0', ('device_train_microbatch_size must be > 0',)),
    ('scheduler.t_warmup=5000ba', ('scheduler.t_warmup (5000ba) is longer than max_duration (200ba)',)),
    ('seed=-1', ('seed must be in [0, 2**32)',)),
    ('train_loader.dataset.max_seq_len=4096', ('train_loader.dataset.max_seq_len (4096) is longer than model.max_seq_len',)),
    ('callbacks.mfu_monitr={}', ("callbacks.mfu_monitr: unknown callback 'mfu_monitr'; did you mean 'mfu_monitor'?",)),
    ('callbacks.speed_monitor={window_sise: 5}', ("unknown key callbacks.speed_monitor.window_sise; did you mean 'window_size'?",)),
    ('callbacks.speed_monitor={window_size: many}', ("callbacks.speed_monitor.window_size must be an integer, got str 'many'",)),
    ('model.name=mpt_causal_lmm', ("model.name: unknown model 'mpt_causal_lmm'; did you mean 'mpt_causal_lm'?",)),
    ('algorithms.gradient_clippin={}', ("unknown algorithm 'gradient_clippin'; did you mean 'gradient_clipping'?",)),
    ('algorithms.gradient_clipping={clipping_type: norm}', ('algorithms.gradient_clipping.clipping_threshold is required',)),
    ('loggers.wandbb={}', ("unknown logger 'wandbb'; did you mean 'wandb'?",)),
    ('optimizer.name=adamw_decoupled', ("optimizer.name: unknown optimizer 'adamw_decoupled'",)),
    ('optimizer.lrr=0.1', ("unknown key optimizer.lrr; did you mean 'lr'?",)),
    ('scheduler.name=cosine_warmup', ("unknown scheduler 'cosine_warmup'; did you mean 'cosine_with_warmup'?",)),
    ('train_loader.name=corpus_txt', ("train_loader.name: unknown dataloader 'corpus_txt'; did you mean 'corpus_text'?",)),
    ('model.ffn_config={ffn_type: mptmpl}', ("unknown ffn_type 'mptmpl'; did you mean 'mptmlp'?",)),
    ('model.norm_type=layer_norm', ("model.norm_type: unknown norm_type 'layer_norm'",)),
    ('tokenizer.kwargs=[1]', ('tokenizer.kwargs must be a mapping, got list [1]',)),
    ('precision=bf16', ("precision 'bf16' is not one of",)),
])
def test_config_mistake_is_one_line(base_overrides, override, needles):
    only_problem(load_with(base_overrides, override), *needles)


def test_global_batch_must_divide_over_processes(cfg):
    from foundry_ext.config.ranges import range_problems
    cfg['global_train_batch_size'] = 33
    ps = range_problems(cfg, world_size=2)
    assert ps == ['global_train_batch_size 33 does not divide over 2 processes (WORLD_SIZE); '
                  'use a multiple of 2, e.g. 32 or 34']
    assert range_problems(cfg, world_size=1) == []


def test_plugin_entry_points_are_known_names():
    """Our own components (entry points of this package) are valid names, read from metadata."""
    from foundry_ext.config.registries import known_names
    assert {'mfu_monitor', 'loss_spike_guard', 'data_fingerprint'} <= set(known_names('callbacks'))
    assert {'corpus_text', 'mixture', 'text'} <= set(known_names('dataloaders'))
    assert 'metrics_jsonl' in known_names('loggers')


def test_override_into_a_non_mapping_is_one_line(base_overrides):
    from foundry_ext.config.load import load
    from foundry_ext.errors import UserError
    with pytest.raises(UserError, match=r"override 'optimizer.betas.7=1' cannot be applied: optimizer.betas is not a "
                                        'mapping'):
        load(YAML, [*base_overrides, 'optimizer.betas.7=1'])


def test_validation_needs_no_heavy_import(base_overrides):
    """Every check above runs before LLM Foundry / Composer / torch would be imported."""
    code = ('import sys; from foundry_ext.config.load import load; from foundry_ext.config.validate import problems_of;'
            f'c = load({str(YAML)!r}, {base_overrides + ["callbacks.nope={}"]!r}); p = problems_of(c); assert p, p;'
            'heavy = [m for m in ("torch", "composer", "llmfoundry", "transformers") if m in sys.modules];'
            'assert not heavy, heavy')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, timeout=120)


def test_train_cli_unknown_callback_one_line_and_outputs_kept(base_overrides, tmp_path):
    """The exit path: code 2, one line, no traceback, the previous run's outputs untouched."""
    run_dir = tmp_path / 'run'
    (run_dir / 'checkpoints').mkdir(parents=True)
    (run_dir / 'metrics.jsonl').write_text('{"step": 1, "loss/train/total": 5.0}\n')
    (run_dir / 'checkpoints' / 'ep0-ba50-rank0.pt').write_bytes(b'previous checkpoint')
    before = tree_digest(run_dir)
    r = run_cli('train', YAML, *base_overrides, f'variables.run_dir={run_dir}', 'callbacks.lr_monitr={}',
                'model=[1,2]')
    assert_one_line(r, 2, 'invalid config')
    assert "callbacks.lr_monitr: unknown callback 'lr_monitr'; did you mean 'lr_monitor'?" in r.stderr
    assert 'model must be a mapping, got list [1, 2]' in r.stderr
    assert tree_digest(run_dir) == before


def test_train_cli_world_size_mismatch(base_overrides):
    r = run_cli('train', YAML, *base_overrides, 'global_train_batch_size=33',
                env={'WORLD_SIZE': '2', 'RANK': '0', 'LOCAL_RANK': '0'})
    assert_one_line(r, 2, 'global_train_batch_size 33 does not divide over 2 processes')


def test_many_problems_one_line_each(cfg):
    c = copy.deepcopy(cfg)
    c['optimizer']['lr'] = -1
    c['max_duration'] = '0ba'
    c['callbacks']['nope'] = {}
    ps = problems(c)
    assert len(ps) >= 3 and all('\n' not in p for p in ps)
