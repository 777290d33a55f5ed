"""Typed options of the loss-spike guard (``loss_spike_guard``) and the spike injector (no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from foundry_ext.errors import UserError
from foundry_ext.validation import did_you_mean, section

ACTIONS = ('log', 'skip', 'cooldown', 'rollback', 'stop')


@dataclass
class SpikeConfig:
    window: int = 128
    warmup: int = 20
    threshold: float = 6.0
    min_rise: float = 0.1
    grad_threshold: Optional[float] = 6.0   # None: no detection on the gradient norm
    grad_min_rise: float = 1.0
    actions: Union[tuple[str, ...], list[str], str] = ('skip', 'cooldown', 'rollback')
    recover_steps: int = 20
    cooldown_steps: int = 50
    cooldown_factor: float = 0.1
    stop_after: int = 5

    def __post_init__(self) -> None:
        self.actions = tuple(self.actions) if not isinstance(self.actions, str) else (self.actions,)
        self.validate()

    def validate(self) -> None:
        where = section('loss_spike_guard')
        def pos_int(name, v, minimum=1):
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise UserError(f'{where}: {name} must be an integer >= {minimum}, got {v!r}')
        pos_int('window', self.window)
        pos_int('warmup', self.warmup, 2)
        pos_int('recover_steps', self.recover_steps)
        pos_int('cooldown_steps', self.cooldown_steps)
        pos_int('stop_after', self.stop_after)
        for name in ('threshold', 'grad_threshold'):
            v = getattr(self, name)
            if v is None and name == 'grad_threshold':
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 1:
                raise UserError(f'{where}: {name} must be a number > 1 (in robust sigmas), got {v!r}')
        for name in ('min_rise', 'grad_min_rise'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise UserError(f'{where}: {name} must be a number >= 0 (0.1 = 10% above the median), '
                                f'got {v!r}')
        f = self.cooldown_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise UserError(f'{where}: cooldown_factor must be in (0, 1], got {f!r}')
        if not self.actions:
            raise UserError(f'{where}: actions must list at least one of {list(ACTIONS)}')
        for a in self.actions:
            if a not in ACTIONS:
                hint = did_you_mean(str(a), ACTIONS)
                raise UserError(f'{where}: unknown action {a!r}, expected one of {list(ACTIONS)}{hint}')

    @property
    def wants_rollback(self) -> bool:
        return 'rollback' in self.actions


@dataclass
class LossSpikeGuardConfig(SpikeConfig):
    """``loss_spike_guard`` callback options: the detector's plus what the adapter does."""
    rollback_skip_batches: int = 0   # extra batches skipped after a rollback (the window is always skipped)
    log_window: int = 8              # how many recent losses a spike's log line shows

    def validate(self) -> None:
        super().validate()
        where = section('loss_spike_guard')
        for name in ('rollback_skip_batches', 'log_window'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f'{where}: {name} must be an integer >= 0, got {v!r}')

    def detector(self) -> SpikeConfig:
        return SpikeConfig(**{k: getattr(self, k) for k in SpikeConfig.__dataclass_fields__})


@dataclass
class InjectSpikeConfig:
    """``inject_spike`` callback options (deliberate spikes for tests and experiments)."""
    poison_steps: Sequence[int] = ()   # steps whose labels become random tokens (bad-data spike)
    lr_steps: Sequence[int] = ()       # steps whose LR is multiplied by lr_factor for one update
    lr_factor: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr_factor <= 0:
            raise UserError(f"{section('inject_spike')}: lr_factor must be > 0, got {self.lr_factor!r}")
