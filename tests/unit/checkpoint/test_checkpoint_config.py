"""Options of checkpoint_integrity and preemption: one line each, before any import (validation)."""
from foundry_ext.config.validate import problems_of


def _p(callbacks):
    return [p for p in problems_of({'callbacks': callbacks}) if 'callbacks.' in p]


def test_option_mistakes_are_one_line():
    assert _p({'checkpoint_integrity': {}, 'preemption': {}}) == []
    (p,) = _p({'preemption': {'signals': ['SIGTREM']}})
    assert "unknown signal 'SIGTREM'" in p and "did you mean 'SIGTERM'" in p
    (p,) = _p({'preemption': {'check_interval': 0}})
    assert 'check_interval must be an integer >= 1' in p
    (p,) = _p({'checkpoint_integrity': {'verify': 'md5'}})
    assert 'callbacks.checkpoint_integrity.verify' in p
    (p,) = _p({'checkpoint_integrity': {'fallbak': True}})
    assert "did you mean 'fallback'" in p
    (p,) = _p({'checkpoint_integrity': {'trusted_globals': ['nodots']}})
    assert 'dotted names' in p
