"""Typed options of the ``checkpoint_integrity`` and ``preemption`` callbacks (no torch import)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from foundry_ext.errors import UserError
from foundry_ext.validation import did_you_mean, section

SIGNALS = ('SIGTERM', 'SIGINT', 'SIGUSR1', 'SIGUSR2', 'SIGHUP')


@dataclass
class CheckpointIntegrityConfig:
    # How a checkpoint is verified before it is loaded: 'checksum' = sizes + sha256 of every file
    # (reads the checkpoint once more), 'size' = sizes and the completion marker only.
    verify: Literal['checksum', 'size'] = 'checksum'
    # Autoresume: when the newest checkpoint is damaged or incomplete, resume from the newest
    # intact one (true) or stop with one line naming the file (false).
    fallback: bool = True
    # Dotted names of extra classes the safe loader may unpickle ("module.Class"), for checkpoints
    # whose callbacks store custom objects. Only for files you trust.
    trusted_globals: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = section('checkpoint_integrity')
        for g in self.trusted_globals:
            if not isinstance(g, str) or '.' not in g.strip('.'):
                raise UserError(f'{where}: trusted_globals entries are dotted names like "mypkg.MyState", '
                                f'got {g!r}')


@dataclass
class PreemptionConfig:
    # Signals that mean "save and stop": every rank stops at the same step, writes a checkpoint and
    # exits with code 75 (re-run the same command to resume). A second SIGINT stops at once.
    signals: list[str] = field(default_factory=lambda: ['SIGTERM', 'SIGINT'])
    # Batches between the (all-reduced) checks of the stop flag while training; every eval batch
    # is checked too. 1 = stop within one step of the signal.
    check_interval: int = 1
    # false: stop at the agreed step without writing a checkpoint (exit code 128 + signal).
    save: bool = True
    # false: keep the default signal behaviour (the callback does nothing).
    enabled: bool = True

    def __post_init__(self) -> None:
        where = section('preemption')
        if isinstance(self.check_interval, bool) or not isinstance(self.check_interval, int) \
                or self.check_interval < 1:
            raise UserError(f'{where}: check_interval must be an integer >= 1, got {self.check_interval!r}')
        if not self.signals:
            raise UserError(f'{where}: signals must name at least one of {list(SIGNALS)}')
        for s in self.signals:
            if s not in SIGNALS:
                raise UserError(f'{where}: unknown signal {s!r}, expected one of {list(SIGNALS)}'
                                f'{did_you_mean(str(s), SIGNALS)}')
