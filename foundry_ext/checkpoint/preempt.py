"""Preemption core (no Composer): the process's stop flag, its signal handlers, the exit codes.

A handler only records the signal; the ``preemption`` callback all-reduces it at step and
eval-batch boundaries so every rank stops at the same one, saves, and raises :class:`Preempted`.
A second SIGINT (Ctrl-C twice) stops at once without a checkpoint.

Exit codes of ``foundry-ext train`` / ``scripts/train.py`` (docs/reliability.md):
0 finished (or already finished), 2 a user mistake (one ``error:`` line), 75 (EX_TEMPFAIL) stopped
by a signal after writing a checkpoint: re-run the same command to resume; 128 + signal (143 for
SIGTERM, 130 for SIGINT) stopped by a signal with nothing saved.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable, Iterable, Optional

EXIT_PREEMPTED = 75


def exit_code(signum: int, saved: bool) -> int:
    return EXIT_PREEMPTED if saved else 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


class Preempted(BaseException):
    """Raised on every rank at the agreed stop point; the train command turns it into the exit code.

    A BaseException, like KeyboardInterrupt: a request to stop, not an error, so no library's
    ``except Exception`` turns it into a crash report on its way out."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str], message: str):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.saved = checkpoint is not None

    @property
    def code(self) -> int:
        return exit_code(self.signum, self.saved)


class StopFlag:
    """Which stop signal arrived first (``signum`` 0: none). One per process (:data:`FLAG`)."""

    def __init__(self) -> None:
        self.signum = 0
        self._sigints = 0
        self._prev: dict[int, Any] = {}
        self.announce: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)

    def install(self, names: Iterable[str]) -> bool:
        """Handle these signals (names like 'SIGTERM'); False where handlers cannot be set (not the
        main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for n in names:
            sig = getattr(signal, n)
            if sig not in self._prev:
                self._prev[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._prev.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._prev.clear()

    def reset(self) -> None:
        self.signum, self._sigints = 0, 0

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints >= 2:   # Ctrl-C twice: the user wants out now
                self.uninstall()
                raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum
            self.announce(f'foundry_ext: {signal_name(signum)} received: stopping at the next step (or eval batch) '
                          'and saving a checkpoint' + (' (Ctrl-C again stops at once, unsaved)'
                                                       if signum == signal.SIGINT else ''))


FLAG = StopFlag()


class IgnoreSignalsInWorker:
    """``worker_init_fn`` wrapper: a DataLoader worker ignores the stop signals (the main process
    handles them and shuts its workers down), so a signal sent to the whole process group does not
    kill a worker mid-batch. Picklable for the spawn start method."""

    def __init__(self, inner: Optional[Callable[[int], Any]], names: Iterable[str]):
        self.inner, self.names = inner, tuple(names)

    def __call__(self, worker_id: int) -> None:
        for n in self.names:
            signal.signal(getattr(signal, n), signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


__all__ = ['EXIT_PREEMPTED', 'FLAG', 'IgnoreSignalsInWorker', 'Preempted', 'StopFlag', 'exit_code', 'signal_name']
