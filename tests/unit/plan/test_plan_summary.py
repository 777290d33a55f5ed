"""The planner's one line at the start of a training run (rank 0, when the device is known)."""
import io

from foundry_ext.commands import train
from foundry_ext.config.load import load
from foundry_ext.plan import summary

from conftest import ROOT

ONE_B = str(ROOT / 'yamls' / 'pretrain' / '1b.yaml')
H100 = ('NVIDIA H100 80GB HBM3', 79.11 * 2 ** 30)


def test_summary_line_on_a_known_gpu(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '8')
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '8')
    monkeypatch.setenv('RANK', '0')
    out = io.StringIO()
    line = summary.print_summary(load(ONE_B), detect=lambda: H100, out=out)
    assert out.getvalue() == f'foundry_ext: {line}\n'
    assert line.startswith('plan: 1.31B params on 8 x h100-sxm: peak ')
    assert 'of 79.1 GiB per GPU (fits' in line and 'tokens/s at MFU' in line
    assert ' days for ' in line or ' h for ' in line


def test_does_not_fit_points_at_the_planner(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '1')
    line = summary.print_summary(load(ONE_B), detect=lambda: H100, out=io.StringIO())
    assert 'DOES NOT FIT' in line and 'foundry-ext plan <yaml> --gpus 1' in line


def test_silent_without_cuda_and_on_other_ranks(monkeypatch):
    out = io.StringIO()
    assert summary.print_summary(load(ONE_B), detect=lambda: None, out=out) is None
    monkeypatch.setenv('RANK', '3')
    assert summary.print_summary(load(ONE_B), detect=lambda: H100, out=out) is None
    assert out.getvalue() == ''


def test_never_stops_a_run():
    cfg = load(ONE_B, ['optimizer.name=shampoo'])
    line = summary.print_summary(cfg, detect=lambda: H100, out=io.StringIO())
    assert line.startswith("plan: not sized (optimizer.name 'shampoo'")

    def broken():
        raise RuntimeError('CUDA driver mismatch')
    assert summary.print_summary(cfg, detect=broken, out=io.StringIO()) is None


def test_train_prints_it_after_the_fallbacks(monkeypatch, tmp_path, capsys):
    (tmp_path / 'tok').mkdir()
    (tmp_path / 'data').mkdir()
    monkeypatch.setattr(summary, 'detect_cuda', lambda: H100)
    train.prepare([ONE_B, f'variables.tokenizer_dir={tmp_path / "tok"}', f'variables.data_root={tmp_path / "data"}'])
    err = capsys.readouterr().err
    assert 'foundry_ext: fallback:' in err                       # CPU: what really runs is planned
    assert err.count('foundry_ext: plan: 1.31B params on 1 x h100-sxm') == 1
