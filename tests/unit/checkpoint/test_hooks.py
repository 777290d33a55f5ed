"""Composer's checkpoint writes and reads go through foundry_ext.checkpoint (a real Composer State)."""
import torch

from foundry_ext import safeload


def _state(tmp_path):
    from composer.core import State
    from composer.devices import DeviceCPU
    model = torch.nn.Linear(4, 3)
    return State(model=model, rank_zero_seed=0, run_name='hooks', device=DeviceCPU(),
                 optimizers=torch.optim.SGD(model.parameters(), lr=0.1), max_duration='4ba')


def test_composer_saves_are_sealed_and_reads_are_safe(tmp_path):
    import pytest
    from composer.utils import checkpoint as ck

    from foundry_ext.checkpoint import callbacks
    callbacks.install_hooks()
    try:
        state = _state(tmp_path)
        path = ck.save_checkpoint(state, str(tmp_path / 'ck' / 'ep{epoch}-ba{batch}-rank{rank}.pt'))
        assert path == str(tmp_path / 'ck' / 'ep0-ba0-rank0.pt')
        assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == ['ep0-ba0-rank0.pt',
                                                                       'ep0-ba0-rank0.pt.manifest.json']
        m = safeload.verify(path)
        assert m['run_name'] == 'hooks' and m['timestamp']['batch'] == 0 and m['max_duration'] == '4ba'
        sd = ck.safe_torch_load(path)     # Composer's reader: now verify + weights_only with the allow-list
        assert torch.equal(sd['state']['model']['weight'], state.model.weight)
        evil = tmp_path / 'evil.pt'
        import fractions
        torch.save({'state': {'x': fractions.Fraction(1, 3)}}, evil)
        with pytest.raises(safeload.CheckpointError, match='evil.pt holds a fractions.Fraction object.*trusted_globals'):
            ck.safe_torch_load(str(evil))
        cut = tmp_path / 'ck' / 'ep0-ba0-rank0.pt'
        cut.write_bytes(cut.read_bytes()[:500])
        with pytest.raises(safeload.CheckpointError, match='is truncated'):
            ck.safe_torch_load(str(cut))
    finally:
        callbacks.uninstall_hooks()


def test_model_mismatch_is_one_line():
    from foundry_ext.checkpoint.trainer import mismatch_message
    try:
        torch.nn.Linear(4, 3).load_state_dict(torch.nn.Linear(8, 3).state_dict())
    except RuntimeError as e:
        msg = mismatch_message(e, 'runs/x/ep0-ba4-rank0.pt')
    assert msg.startswith('checkpoint runs/x/ep0-ba4-rank0.pt was written by a different model: weight is [3, 8] '
                          'in the checkpoint but [3, 4] here') and '\n' not in msg
    try:
        torch.nn.Linear(4, 3).load_state_dict({'weight': torch.zeros(3, 4)})
    except RuntimeError as e:
        assert 'missing key(s) in state_dict' in mismatch_message(e, None)
    assert mismatch_message(RuntimeError('other'), None) is None
