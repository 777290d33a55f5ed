"""`foundry-ext plan`: the report, --json, --diff, and every bad input as one line with exit code 2."""
import json
import subprocess
import sys

import pytest

from foundry_ext import config
from foundry_ext.commands import plan as cmd
from foundry_ext.errors import UserError

from conftest import ROOT

ONE_B = str(ROOT / 'yamls' / 'pretrain' / '1b.yaml')
MOE = str(ROOT / 'yamls' / 'pretrain' / '8x125m-top2.yaml')


def run(capsys, *argv):
    code = cmd.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_itemizes_memory_speed_and_run(capsys):
    code, out, err = run(capsys, ONE_B, '--gpus', '8', '--gpu', 'h100-sxm', '--usd-per-gpu-hour', '2.5')
    assert code == 0 and not err
    for needle in ('weights (fp32 master)', 'gradients', 'optimizer states (decoupled_adamw)',
                   'FSDP unsharded params', 'activations (checkpointed)', 'logits + loss', 'loss backward',
                   'optimizer step temporaries', 'allocator fragmentation margin', 'CUDA context + NCCL',
                   'host RAM per node', 'FITS', 'tokens/s', 'GPU-hours, $', 'chinchilla', 'microbatch',
                   'FSDP FULL_SHARD over 8'):
        assert needle in out, needle
    # the shipped yaml's data folders are missing here: a note, not an error
    assert 'note      train would refuse this config here' in out


def test_key_value_overrides_and_flags_in_any_order(capsys):
    code, a, _ = run(capsys, ONE_B, 'device_train_microbatch_size=4', '--gpu', 'h100-sxm', '--gpus', '8',
                     'fsdp_config.activation_checkpointing=false')
    assert code == 0
    assert 'microbatch 4' in a and 'activation checkpointing off' in a


def test_json_has_the_same_numbers(capsys):
    code, out, _ = run(capsys, MOE, '--gpus', '8', '--gpu', 'h200', '--json', '--tokens', '5B')
    assert code == 0
    d = json.loads(out)
    assert d['model']['experts'] == 8 and d['model']['params_active'] < d['model']['params_total']
    assert d['memory']['fits'] is True and d['cluster']['gpu'] == 'h200'
    terms = d['memory']['terms']
    assert {'weights', 'gradients', 'optimizer', 'activations', 'logits'} <= set(terms)
    assert d['memory']['allocated_gib'] == pytest.approx(max(d['memory']['phases_gib'].values()))
    assert d['run']['tokens'] == 5e9 and d['run']['days'] > 0
    assert d['speed']['flops_per_token'] > 6 * d['model']['params_active']


def test_diff_explains_why_one_fits_and_the_other_does_not(capsys, tmp_path):
    a = tmp_path / 'a.yaml'
    b = tmp_path / 'b.yaml'
    a.write_text(open(ONE_B).read())
    b.write_text(open(ONE_B).read().replace('activation_checkpointing: true', 'activation_checkpointing: false')
                 .replace('device_train_microbatch_size: 16', 'device_train_microbatch_size: 32'))
    code, out, _ = run(capsys, '--diff', str(a), str(b), '--gpus', '8', '--gpu', 'h100-sxm')
    assert code == 0
    lines = out.splitlines()
    act = next(ln for ln in lines if ln.strip().startswith('activations'))
    assert '+' in act.split()[-1]                              # b keeps every block's activations
    assert any('DOES NOT FIT' in ln for ln in lines if 'verdict' in ln)
    assert 'fsdp_config.activation_checkpointing: True -> False' in out
    assert 'device_train_microbatch_size: 16 -> 32' in out
    code, js, _ = run(capsys, '--diff', str(a), str(b), '--gpus', '8', '--gpu', 'h100-sxm', '--json')
    d = json.loads(js)
    assert [p['memory']['fits'] for p in d['plans']] == [True, False]


def test_does_not_fit_lists_fixes(capsys):
    code, out, _ = run(capsys, ONE_B, '--gpu', 'a100-40gb', 'fsdp_config.activation_checkpointing=false',
                       'device_train_microbatch_size=64', '--gpus', '8')
    assert code == 0 and 'DOES NOT FIT' in out
    assert 'to make it fit (cheapest first' in out and '1. ' in out
    assert 'device_train_microbatch_size=' in out


@pytest.mark.parametrize('argv,msg', [
    ([ONE_B, '--gpu', 'x100', '--gpus', '8'], "unknown GPU 'x100'; known: h100-sxm, h100-pcie, h200"),
    ([ONE_B, '--gpu', 'a100'], "GPU 'a100' comes in several memory sizes; say which: a100-40gb, a100-80gb"),
    ([ONE_B, '--gpu', 'h100-sxm', '--gpus', '0'], '--gpus must be a positive integer'),
    ([ONE_B, '--gpu', 'h100-sxm', '--gpus', '-2'], '--gpus must be a positive integer'),
    ([ONE_B, '--gpu', 'h100-sxm', '--tokens', '-5B'], '--tokens must be > 0'),
    ([ONE_B, '--gpu', 'h100-sxm', '--tokens', 'many'], "--tokens 'many' is not a token count"),
    ([ONE_B, '--gpu', 'h100-sxm', '--mfu', '1.5'], '--mfu must be in (0, 1]'),
    ([ONE_B, '--gpu', 'h100-sxm', '--gpus', 'eight'], "argument --gpus: invalid int value: 'eight'"),
    ([ONE_B], 'pass --gpu NAME (known: h100-sxm'),
    ([ONE_B, '--gpu', 'h100-sxm', '--gpus', '8', 'device_train_microbatch_size=128'],
     'device_train_microbatch_size 128 is larger than the per-device batch 64'),
    ([ONE_B, '--gpu', 'h100-sxm', '--gpus', '6'], 'global_train_batch_size 512 is not divisible by 6 GPUs'),
    ([ONE_B, '--gpu', 'h100-sxm', 'model.name=bert_lm'], "model.name 'bert_lm': the planner has memory models"),
    ([ONE_B, '--gpu', 'h100-sxm', 'compile_config={}'], 'compile_config: torch.compile changes'),
    ([ONE_B, '--gpu', 'h100-sxm', 'optimizer.name=shampoo'], "optimizer.name 'shampoo'"),
    (['missing.yaml', '--gpu', 'h100-sxm'], 'config file missing.yaml does not exist'),
    ([str(ROOT / 'yamls' / 'eval' / 'starter.yaml'), '--gpu', 'h100-sxm'], 'is an eval config (icl_tasks, no train_loader)'),
    ([ONE_B, '--gpu', 'h100-sxm', 'model.attn_config.attn_impl=triton'],   # plus missing folders: those stay notes
     "invalid config: model.attn_config.attn_impl 'triton' is not one of auto, flash, sdpa, torch"),
    ([ONE_B, '--gpu', 'h100-sxm', '--host-ram-gib', '0'], '--host-ram-gib must be > 0'),
    (['--diff', ONE_B, '--gpu', 'h100-sxm'], '--diff needs at least two configs'),
    ([ONE_B, MOE, '--gpu', 'h100-sxm'], 'one config at a time'),
    ([], 'usage: foundry-ext plan'),
])
def test_bad_input_is_one_line(capsys, argv, msg):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith('error: ') and msg in err, err
    assert err.count('\n') == 1


def test_invalid_yaml_gets_trains_message(capsys, tmp_path):
    (tmp_path / 'tok').mkdir()
    (tmp_path / 'data').mkdir()
    over = [f'variables.tokenizer_dir={tmp_path / "tok"}', f'variables.data_root={tmp_path / "data"}', 'optimizr.lr=1']
    cfg = config.load(ONE_B, over)
    with pytest.raises(UserError) as e:
        config.validate(cfg)                                  # what `train` says
    code, out, err = run(capsys, ONE_B, *over, '--gpu', 'h100-sxm')
    assert code == 2 and err == f'error: {e.value}\n'
    assert "did you mean 'optimizer'?" in err


@pytest.mark.parametrize('yaml', sorted((ROOT / 'yamls' / 'pretrain').glob('*.yaml')), ids=lambda p: p.stem)
def test_every_shipped_pretrain_yaml_plans(capsys, yaml):
    gpus = '1' if 'cpu' in yaml.stem else '8'
    code, out, err = run(capsys, str(yaml), '--gpu', 'h100-sxm', '--gpus', gpus)
    assert code == 0 and not err, err
    assert '= total' in out and ('FITS' in out or 'DOES NOT FIT' in out)


# LLM Foundry's own scripts/train/yamls/pretrain/mpt-125m.yaml (0.22 style: variables under `variables:`)
LLMFOUNDRY_125M = """\
variables:
  data_local: ./my-copy-c4
  data_remote:
  max_seq_len: 2048
  global_seed: 17
max_seq_len: ${variables.max_seq_len}
run_name:
model:
  name: mpt_causal_lm
  init_device: meta
  d_model: 768
  n_heads: 12
  n_layers: 12
  expansion_ratio: 4
  max_seq_len: ${variables.max_seq_len}
  vocab_size: 50368
  attn_config:
    attn_impl: flash
tokenizer:
  name: EleutherAI/gpt-neox-20b
  kwargs:
    model_max_length: ${variables.max_seq_len}
train_loader:
  name: text
  dataset: {local: '${variables.data_local}', remote: '${variables.data_remote}', split: train, shuffle: true,
            max_seq_len: '${variables.max_seq_len}', shuffle_seed: '${variables.global_seed}'}
  drop_last: true
  num_workers: 8
scheduler: {name: cosine_with_warmup, t_warmup: 100ba, alpha_f: 0.1}
optimizer: {name: decoupled_adamw, lr: 6.0e-4, betas: [0.9, 0.95], eps: 1.0e-08, weight_decay: 0.0}
algorithms:
  gradient_clipping: {clipping_type: norm, clipping_threshold: 1.0}
max_duration: 4800ba
global_train_batch_size: 256
seed: ${variables.global_seed}
device_train_microbatch_size: 16
precision: amp_bf16
fsdp_config: {sharding_strategy: FULL_SHARD, mixed_precision: PURE, activation_checkpointing: false,
              activation_checkpointing_reentrant: false, activation_cpu_offload: false, limit_all_gathers: true}
callbacks: {speed_monitor: {window_size: 10}, lr_monitor: {}, memory_monitor: {}, runtime_estimator: {}}
"""


def test_plain_llm_foundry_yaml(capsys, tmp_path):
    y = tmp_path / 'mpt-125m.yaml'
    y.write_text(LLMFOUNDRY_125M)
    code, out, err = run(capsys, str(y), '--gpu', 'a100-40gb', '--gpus', '8')
    assert code == 0 and not err, err
    assert 'mpt_causal_lm: 125M params' in out and 'attention flash' in out and 'FITS' in out
    assert 'per-GPU batch 32, microbatch 16 (2 accumulation steps)' in out
    assert "note      train would refuse this config here: tokenizer.name 'EleutherAI/gpt-neox-20b'" in out
    # an hf_causal_lm naming a hub model: the planner needs its config.json, and says so in one line
    y.write_text(LLMFOUNDRY_125M.split('model:')[0] + 'model:\n  name: hf_causal_lm\n  pretrained: true\n'
                 '  pretrained_model_name_or_path: meta-llama/Llama-2-7b\ntokenizer:' + LLMFOUNDRY_125M.split('tokenizer:')[1])
    code, out, err = run(capsys, str(y), '--gpu', 'h100-sxm', '--gpus', '8')
    assert code == 2 and not out and err.count('\n') == 1
    assert 'model.pretrained_model_name_or_path: no config.json in meta-llama/Llama-2-7b' in err


def test_cli_verb_no_traceback():
    r = subprocess.run([sys.executable, '-m', 'foundry_ext', 'plan', ONE_B, '--gpu', 'x100'], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.startswith("error: unknown GPU 'x100'; known:")
    r = subprocess.run([sys.executable, '-m', 'foundry_ext', 'plan', ONE_B, '--gpu', 'h200', '--gpus', '8', '--json'],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)['memory']['fits']
