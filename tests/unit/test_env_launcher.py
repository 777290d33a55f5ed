"""torchrun launches: Composer needs NODE_RANK, which only `composer -n` sets."""
from foundry_ext import env


def test_node_rank_from_torchrun(monkeypatch):
    monkeypatch.delenv('NODE_RANK', raising=False)
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('GROUP_RANK', '1')
    env.launcher_defaults()
    assert env.os.environ['NODE_RANK'] == '1'
    monkeypatch.setenv('NODE_RANK', '0')      # a launcher's own value is kept
    env.launcher_defaults()
    assert env.os.environ['NODE_RANK'] == '0'
    monkeypatch.delenv('NODE_RANK')
    monkeypatch.delenv('WORLD_SIZE')           # no launcher: nothing set
    env.launcher_defaults()
    assert 'NODE_RANK' not in env.os.environ
