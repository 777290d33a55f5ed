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


def test_cli_verb_no_traceback():
    r = subprocess.run([sys.executable, '-m', 'foundry_ext', 'plan', ONE_B, '--gpu', 'x100'], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.startswith("error: unknown GPU 'x100'; known:")
    r = subprocess.run([sys.executable, '-m', 'foundry_ext', 'plan', ONE_B, '--gpu', 'h200', '--gpus', '8', '--json'],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)['memory']['fits']
