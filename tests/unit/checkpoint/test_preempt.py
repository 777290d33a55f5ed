"""The stop flag, its handlers and the exit codes (pure; real signals to this process)."""
import os
import pickle
import signal

import pytest

from foundry_ext.checkpoint import preempt


def test_flag_records_first_signal_and_restores_handlers():
    f = preempt.StopFlag()
    said = []
    f.announce = said.append
    before = signal.getsignal(signal.SIGUSR1)
    assert f.install(['SIGUSR1', 'SIGUSR2'])
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)
    assert f.signum == signal.SIGUSR1 and len(said) == 1 and 'SIGUSR1 received' in said[0]
    f.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before
    f.reset()
    assert f.signum == 0


def test_second_ctrl_c_stops_at_once():
    f = preempt.StopFlag()
    f.announce = lambda m: None
    before = signal.getsignal(signal.SIGINT)   # pytest's or an earlier test's handler
    f.install(['SIGINT'])
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert f.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is before   # the second one restored it
    finally:
        f.uninstall()


def test_exit_codes_and_preempted():
    assert preempt.exit_code(signal.SIGTERM, saved=True) == 75
    assert preempt.exit_code(signal.SIGTERM, saved=False) == 143
    p = preempt.Preempted(signal.SIGINT, 7, None, 'stopped')
    assert p.code == 130 and not isinstance(p, Exception)   # not swallowed by `except Exception`
    assert preempt.Preempted(signal.SIGTERM, 7, 'x.pt', 'stopped').code == 75


def test_worker_init_ignores_stop_signals():
    seen = []
    fn = pickle.loads(pickle.dumps(preempt.IgnoreSignalsInWorker(None, ['SIGUSR2'])))
    before = signal.getsignal(signal.SIGUSR2)
    try:
        fn(0)
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR2)   # ignored: the test goes on
        preempt.IgnoreSignalsInWorker(seen.append, ['SIGUSR2'])(3)
        assert seen == [3]
    finally:
        signal.signal(signal.SIGUSR2, before)
