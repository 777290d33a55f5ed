"""Loss-spike detection and the recovery ladder, as a pure state machine (no torch, no Composer).

Detection (per step, on the all-reduced loss and on the gradient norm):

* robust rolling statistics over the last ``window`` *accepted* values (spikes are not added, so
  a spike cannot raise its own bar): median ``m``, and the noise ``sigma = 1.4826 * MAD / sqrt(2)``
  of consecutive differences (differencing removes the downward trend, which would otherwise
  inflate sigma early in training). A value ``x`` is a spike when, after ``warmup`` values,

      x > m + threshold * sigma   and   x > (1 + min_rise) * m

  The first term is OLMo-core's 6-sigma rule made robust (mean/std are themselves dragged by the
  spikes they should find); the second keeps a flat, very quiet curve from flagging a 1% wiggle
  (the role of LLM Foundry's ``outlier_multiplier`` 2x and Megatron's 10x, but tighter).
  A decreasing curve never triggers: the median of the past lies above the present.
* NaN or Inf (loss or grad norm) is always a spike, from step 0.

Defaults, against the anchors: ``window=128`` (OLMo-core), ``threshold=6`` sigma (OLMo-core),
``min_rise=0.1`` for the loss (LLM Foundry flags >= 2x the mean, Megatron >= 10x: both only catch
large spikes), ``grad_min_rise=1.0`` (a gradient norm at least doubles).

The ladder: the k-th spike of an *incident* gets ``actions[k-1]`` (the last entry repeats); an
incident ends after ``recover_steps`` clean steps in a row (counted as recovered). Actions:
``log`` (always done), ``skip`` (drop this optimizer step), ``cooldown`` (skip, then scale the LR
by ``cooldown_factor`` for ``cooldown_steps`` steps), ``rollback`` (restore the last checkpoint
saved at or before the incident's first spike; the data in between is skipped), ``stop``.
``stop_after`` spikes in one unrecovered incident always stop the run.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Optional

from foundry_ext.errors import UserError
from foundry_ext.stability.config import ACTIONS, SpikeConfig

__all__ = ['ACTIONS', 'SpikeConfig', 'SpikeGuard', 'SpikeStop', 'Decision', 'RobustWindow', 'run_series']

MAD_TO_SIGMA = 1.4826


class SpikeStop(UserError):
    """Raised (on every rank) when the guard stops a run after unrecovered spikes."""


class RobustWindow:
    """Rolling median / MAD of the last ``size`` accepted values."""

    def __init__(self, size: int, warmup: int, threshold: float, min_rise: float) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.warmup, self.threshold, self.min_rise = warmup, threshold, min_rise

    @staticmethod
    def _median(v: list[float]) -> float:
        v = sorted(v)
        n = len(v)
        return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    def stats(self) -> tuple[float, float]:
        """(median of the window, noise sigma from the MAD of consecutive differences / sqrt 2).

        Differencing removes the trend, so a fast-falling early curve does not inflate sigma and
        hide moderate spikes; the median of the past lies above a falling present (no false alarms).
        """
        v = list(self.values)
        med = self._median(v)
        diffs = [b - a for a, b in zip(v, v[1:])]
        dm = self._median(diffs)
        mad = self._median([abs(x - dm) for x in diffs])
        return med, MAD_TO_SIGMA * mad / math.sqrt(2.0)

    def check(self, x: float) -> tuple[bool, float, float]:
        """(is spike, robust z, median). Accepted values join the window; spikes do not."""
        if not math.isfinite(x):
            return True, math.inf, math.nan
        if len(self.values) < self.warmup:
            self.values.append(x)
            return False, 0.0, math.nan
        med, sigma = self.stats()
        z = (x - med) / sigma if sigma > 0 else (math.inf if x > med else 0.0)
        spike = z > self.threshold and x > (1.0 + self.min_rise) * med
        if not spike:
            self.values.append(x)
        return spike, z, med


@dataclass
class Decision:
    step: int
    spike: bool = False
    reason: str = ''              # 'loss', 'grad_norm', 'nonfinite' (joined with '+')
    action: str = 'none'          # 'none' or one of ACTIONS
    loss: float = math.nan
    grad_norm: Optional[float] = None
    loss_z: float = 0.0
    loss_median: float = math.nan
    incident_spikes: int = 0
    rollback_to: Optional[int] = None   # step of the incident's first spike: restore a checkpoint <= this
    recovered: bool = False             # this clean step closed an incident

    @property
    def skip_step(self) -> bool:
        return self.spike and self.action in ('skip', 'cooldown', 'rollback', 'stop')


@dataclass
class _Counters:
    spikes: int = 0
    incidents: int = 0
    recovered: int = 0
    skipped: int = 0
    cooldowns: int = 0
    rollbacks: int = 0
    incident_spikes: int = 0
    incident_start: int = -1
    clean_run: int = 0
    cooldown_until: int = -1
    events: list = field(default_factory=list)   # the last few spike decisions, as dicts


class SpikeGuard:
    """Feed it one (step, loss, grad_norm) per optimizer step; it says what to do."""

    MAX_EVENTS = 64

    def __init__(self, cfg: SpikeConfig | None = None, **kwargs: Any) -> None:
        self.cfg = cfg or SpikeConfig(**kwargs)
        c = self.cfg
        self.loss_window = RobustWindow(c.window, min(c.warmup, c.window), c.threshold, c.min_rise)
        self.grad_window = None if c.grad_threshold is None else \
            RobustWindow(c.window, min(c.warmup, c.window), c.grad_threshold, c.grad_min_rise)
        self.n = _Counters()

    # --------------------------------------------------------------------------- per step
    def lr_scale(self, step: int) -> float:
        return self.cfg.cooldown_factor if step < self.n.cooldown_until else 1.0

    def observe(self, step: int, loss: float, grad_norm: float | None = None) -> Decision:
        g = None if grad_norm is None else float(grad_norm)
        d = Decision(step=step, loss=float(loss), grad_norm=g)
        reasons = []
        nonfinite = not math.isfinite(d.loss) or (g is not None and not math.isfinite(g))
        if nonfinite:
            reasons.append('nonfinite')
        else:
            spike, d.loss_z, d.loss_median = self.loss_window.check(d.loss)
            if spike:
                reasons.append('loss')
            if self.grad_window is not None and g is not None:
                gspike, _, _ = self.grad_window.check(g)
                if gspike:
                    reasons.append('grad_norm')
        n = self.n
        if not reasons:
            n.clean_run += 1
            if n.incident_spikes and n.clean_run >= self.cfg.recover_steps:
                n.recovered += 1
                n.incident_spikes, n.incident_start = 0, -1
                d.recovered = True
            return d
        d.spike, d.reason = True, '+'.join(reasons)
        n.spikes += 1
        n.clean_run = 0
        if n.incident_spikes == 0:
            n.incidents += 1
            n.incident_start = step
        n.incident_spikes += 1
        d.incident_spikes = n.incident_spikes
        acts = self.cfg.actions
        d.action = acts[min(n.incident_spikes, len(acts)) - 1]
        if n.incident_spikes >= self.cfg.stop_after:
            d.action = 'stop'
        if d.action == 'cooldown':
            n.cooldowns += 1
            n.cooldown_until = step + 1 + self.cfg.cooldown_steps
        elif d.action == 'rollback':
            d.rollback_to = n.incident_start
        if d.skip_step:
            n.skipped += 1
        n.events.append({k: v for k, v in asdict(d).items() if v is not None})
        del n.events[:-self.MAX_EVENTS]
        return d

    def rollback_done(self, ok: bool) -> None:
        if ok:
            self.n.rollbacks += 1

    def stop_message(self, d: Decision) -> str:
        return (f'loss_spike_guard: stopping at step {d.step}: {d.incident_spikes} spikes since step '
                f'{self.n.incident_start} without {self.cfg.recover_steps} clean steps in between '
                f'(last loss {d.loss:.4g}, median {d.loss_median:.4g}, reason {d.reason}); lower the LR, '
                'check the data around those steps, or resume from an earlier checkpoint')

    def recent_losses(self, k: int = 8) -> list[float]:
        return list(self.loss_window.values)[-k:]

    def metrics(self) -> dict[str, float]:
        n = self.n
        return {'loss_spike/spikes': n.spikes, 'loss_spike/skipped_steps': n.skipped,
                'loss_spike/rollbacks': n.rollbacks, 'loss_spike/recovered': n.recovered,
                'loss_spike/incident_spikes': n.incident_spikes, 'loss_spike/cooldowns': n.cooldowns}

    # --------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {'counters': asdict(self.n), 'loss_window': list(self.loss_window.values),
                'grad_window': None if self.grad_window is None else list(self.grad_window.values)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        names = {f.name for f in fields(_Counters)}
        self.n = _Counters(**{k: v for k, v in sd.get('counters', {}).items() if k in names})
        self.loss_window.values.clear()
        self.loss_window.values.extend(sd.get('loss_window') or [])
        if self.grad_window is not None:
            self.grad_window.values.clear()
            self.grad_window.values.extend(sd.get('grad_window') or [])


def run_series(guard: SpikeGuard, losses: Iterable[float], grad_norms: Iterable[float] | None = None) -> list[Decision]:
    """Feed a whole series (for tests and offline analysis)."""
    gn = list(grad_norms) if grad_norms is not None else None
    return [guard.observe(i, x, None if gn is None else gn[i]) for i, x in enumerate(losses)]
