"""Measuring memory on any device: live tensor bytes and what autograd saves (torch; for calibration).

:class:`LiveBytes` is a ``TorchDispatchMode`` that sees every tensor an op returns and counts each
storage once, until its last reference dies (a weak reference with a callback): the high-water mark
is the CPU analogue of ``torch.cuda.max_memory_allocated`` (which also rounds blocks up to 512 bytes
and counts kernel workspaces). :func:`saved_bytes` counts the distinct storages autograd saves for
backward during a call, parameters excluded. ``bench/plan_accuracy.py`` and the planner's unit
tests compare the analytic model against these.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary


class LiveBytes:
    """``with tracker.mode: ...``; ``tracker.peak`` (bytes), ``tracker.phase_peak[phase]``."""

    def __init__(self) -> None:
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.cur = 0
        self.peak = 0
        self.phase = 'init'
        self.phase_peak: dict[str, int] = {}
        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tree_map_only(torch.Tensor, tracker.track, out)
                tracker.update()
                return out
        self.mode = _Mode()

    def _free(self, n: int, _ref: Any) -> None:
        self.cur -= n

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage (once) from now until it is freed."""
        if t.device.type == 'meta':
            return
        st = t.untyped_storage()
        if st in self.seen:
            return
        n = st.nbytes()
        self.seen[st] = weakref.ref(st, functools.partial(self._free, n))
        self.cur += n
        self.update()

    def track_all(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self.track(t)

    def update(self) -> None:
        self.peak = max(self.peak, self.cur)
        self.phase_peak[self.phase] = max(self.phase_peak.get(self.phase, 0), self.cur)

    def set_phase(self, phase: str) -> None:
        self.phase = phase


def saved_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """(bytes of the distinct storages autograd saves while ``fn`` runs, fn's result)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        k = st.data_ptr()
        if k not in skip and st.nbytes() > 0:
            seen[k] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
