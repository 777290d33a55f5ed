"""Shared checks of tests/bad_inputs: one line, the right exit code, no traceback, nothing written."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

FAKE_SECRET = 'hf_FAKEtoken1234567890abcdef'


def run_cli(*args, env=None, timeout=120, cwd=None):
    """`python -m foundry_ext <args>` in a subprocess; the exit path as a user sees it."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, '-m', 'foundry_ext', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT, env=e)


def assert_one_line(r, code, *needles):
    """Exit ``code``, the error is one ``error:`` line containing every needle, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    out = r.stdout + r.stderr
    assert 'Traceback' not in out, out[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(errors) == 1, r.stderr[-2000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def problems(cfg):
    """Validation problems of a config dict (no subprocess, no heavy import)."""
    from foundry_ext.config.validate import problems_of
    return problems_of(cfg)


def only_problem(cfg, *needles):
    ps = problems(cfg)
    hits = [p for p in ps if all(n in p for n in needles)]
    assert hits, ps
    assert all('\n' not in p for p in ps)
    return hits[0]


def raises_one_line(fn, *needles, exc=None):
    from foundry_ext.errors import UserError
    with pytest.raises(exc or UserError) as e:
        fn()
    msg = str(e.value)
    for n in needles:
        assert n in msg, (n, msg)
    return msg
