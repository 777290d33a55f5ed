"""Peak FLOP/s per device and precision, for MFU. Never 0: unknown hardware is measured.

Dense (no sparsity) tensor-core peaks from the vendors' data sheets; docs/mfu.md names the source
of each number and the known approximations. Resolution order in :func:`peak_flops`: a user value >
a table entry for a given / detected device name > a short matmul probe (cached in
``$FOUNDRY_EXT_CACHE`` or ``~/.cache/foundry_ext``). On CPU the probe is what makes MFU meaningful
(it is "fraction of what a big fp32 matmul reaches here").
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from foundry_ext.errors import UserError

# device key -> precision -> FLOP/s. 'fp32' is plain fp32 (PyTorch leaves TF32 off for matmuls).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    'h200': {'fp32': 67e12, 'tf32': 494.7e12, 'bf16': 989.5e12, 'fp16': 989.5e12, 'fp8': 1979e12},
    'h100-sxm': {'fp32': 67e12, 'tf32': 494.7e12, 'bf16': 989.5e12, 'fp16': 989.5e12, 'fp8': 1979e12},
    'h100-pcie': {'fp32': 51e12, 'tf32': 378e12, 'bf16': 756e12, 'fp16': 756e12, 'fp8': 1513e12},
    'a100': {'fp32': 19.5e12, 'tf32': 156e12, 'bf16': 312e12, 'fp16': 312e12},
    'b200': {'fp32': 80e12, 'tf32': 1.1e15, 'bf16': 2.25e15, 'fp16': 2.25e15, 'fp8': 4.5e15},
    'l40s': {'fp32': 91.6e12, 'tf32': 183e12, 'bf16': 362e12, 'fp16': 362e12, 'fp8': 733e12},
    'a10g': {'fp32': 31.2e12, 'tf32': 62.5e12, 'bf16': 125e12, 'fp16': 125e12},
    'l4': {'fp32': 30.3e12, 'tf32': 60e12, 'bf16': 121e12, 'fp16': 121e12, 'fp8': 242e12},
    'v100': {'fp32': 15.7e12, 'fp16': 125e12},
    't4': {'fp32': 8.1e12, 'fp16': 65e12},
    'mi300x': {'fp32': 163.4e12, 'tf32': 653.7e12, 'bf16': 1307.4e12, 'fp16': 1307.4e12, 'fp8': 2614.9e12},
}
# Composer precision names -> table column.
PRECISION_KEY = {'fp32': 'fp32', 'amp_fp16': 'fp16', 'amp_bf16': 'bf16', 'amp_fp8': 'fp8', 'tf32': 'tf32',
                 'bf16': 'bf16', 'fp16': 'fp16', 'fp8': 'fp8'}

# Memory of one device as torch sees it (torch.cuda.get_device_properties().total_memory, the "total
# capacity" CUDA out-of-memory messages quote; approximate, GiB), per name `foundry-ext plan --gpu`
# accepts; each maps to its PEAK_FLOPS row. Names sold in two sizes (a100, v100) need the size. At
# training time the planner reads the real total from torch instead.
GPU_MEMORY_GIB: dict[str, float] = {
    'h100-sxm': 79.11, 'h100-pcie': 79.11, 'h200': 139.8, 'b200': 178.4,
    'a100-80gb': 79.15, 'a100-40gb': 39.39, 'l40s': 44.5, 'a10g': 22.2, 'l4': 22.0,
    'v100-32gb': 31.75, 'v100-16gb': 15.78, 't4': 14.75, 'mi300x': 191.98,
}
_GPU_PEAK_KEY = {'a100-80gb': 'a100', 'a100-40gb': 'a100', 'v100-32gb': 'v100', 'v100-16gb': 'v100'}


def device_key(name: str) -> str | None:
    """Map a device name (``torch.cuda.get_device_name()`` or a table key) to a table key."""
    n = name.lower().replace('_', '-').replace(' ', '-')
    if n in PEAK_FLOPS:
        return n
    if 'h200' in n or 'gh200' in n:
        return 'h200'
    if 'h100' in n:
        return 'h100-pcie' if 'pcie' in n else 'h100-sxm'
    for key in ('a100', 'b200', 'l40s', 'a10g', 'v100', 'mi300x', 't4'):
        if key in n:
            return key
    if n == 'l4' or 'nvidia-l4' in n:
        return 'l4'
    return None


def table_peak(device: str, precision: str) -> float:
    """Peak FLOP/s from the table; UserError (one line) for an unknown device or precision."""
    key = device_key(device)
    if key is None:
        raise UserError(f'unknown device name {device!r}; known: {", ".join(sorted(PEAK_FLOPS))} '
                        '(or set peak_flops to a number, or leave device unset to measure it)')
    col = PRECISION_KEY.get(precision)
    if col is None or col not in PEAK_FLOPS[key]:
        raise UserError(f'no peak for precision {precision!r} on {key}; known: {sorted(PEAK_FLOPS[key])} '
                        '(or set peak_flops to a number)')
    return PEAK_FLOPS[key][col]


def _cache_path() -> Path:
    root = os.environ.get('FOUNDRY_EXT_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'foundry_ext')
    return Path(root) / 'peak_flops.json'


def probe_key(device: str, precision: str) -> str:
    import torch
    return f'{device}|{precision}|threads={torch.get_num_threads()}|torch={torch.__version__}'


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def probe_peak(device: str = 'cpu', precision: str = 'fp32', seconds: float = 0.3, size: int = 512,
               use_cache: bool = True) -> float:
    """Peak matmul FLOP/s: the best of ~``seconds`` of square matmuls now and of every earlier
    probe on this device/precision/thread count (cached). A probe taken while the machine was
    busy reads low; keeping the best one seen means MFU is never inflated by a busy moment."""
    import torch
    key = probe_key(device, precision)
    path = _cache_path()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(PRECISION_KEY.get(precision, 'fp32'), torch.float32)
    dev = torch.device(device if device != 'cpu' else 'cpu')
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    a @ b  # warm-up
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == 0.0:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        dt = time.perf_counter() - t0
        if dt > 0:
            best = max(best, 4 * 2 * size ** 3 / dt)
    if not use_cache:
        return best
    data = _read_cache(path)
    try:
        best = max(best, float(data.get(key, 0.0)))
    except (TypeError, ValueError):
        pass
    data[key] = best
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only loses the memory of earlier probes
    return best


def peak_flops(precision: str = 'fp32', device: str | None = None, peak: float | None = None,
               detected: str | None = None, probe_device: str = 'cpu') -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from).

    ``peak``: user value (wins). ``device``: a user-given name, must be in the table.
    ``detected``: the name the runtime reports (e.g. ``torch.cuda.get_device_name()``); used
    when known, else measured. ``probe_device``: where to run the probe.
    """
    if peak is not None:
        if isinstance(peak, bool) or not isinstance(peak, (int, float)) or not peak > 0:
            raise UserError(f'peak_flops must be a number > 0 (FLOP/s per device), got {peak!r}')
        return float(peak), 'user'
    if device:
        return table_peak(device, precision), f'table:{device_key(device)}'
    if detected and device_key(detected) is not None:
        try:
            return table_peak(detected, precision), f'table:{device_key(detected)}'
        except UserError:
            pass  # precision missing for this device: measure it
    return probe_peak(probe_device, precision), f'probe:{detected or probe_device}'


def gpu_key(name: str) -> str:
    """A GPU name (``--gpu`` value, ``torch.cuda.get_device_name()`` or LLM Foundry's ``h100_80gb``) ->
    a :data:`GPU_MEMORY_GIB` key; UserError (one line, the known names) when unknown or ambiguous."""
    n = name.lower().replace('_', '-').replace(' ', '-')
    if n in GPU_MEMORY_GIB:
        return n
    for fam in ('a100', 'v100'):
        if fam in n:
            for size in ('80gb', '40gb', '32gb', '16gb'):
                if size in n and f'{fam}-{size}' in GPU_MEMORY_GIB:
                    return f'{fam}-{size}'
            sizes = sorted(k for k in GPU_MEMORY_GIB if k.startswith(fam))
            raise UserError(f'GPU {name!r} comes in several memory sizes; say which: {", ".join(sizes)}')
    key = device_key(name)
    if key is not None and key in GPU_MEMORY_GIB:
        return key
    raise UserError(f'unknown GPU {name!r}; known: {", ".join(GPU_MEMORY_GIB)}')


def gpu_memory_bytes(key: str) -> float:
    return GPU_MEMORY_GIB[key] * 2 ** 30


def gpu_peak_key(key: str) -> str:
    """The PEAK_FLOPS row of a :data:`GPU_MEMORY_GIB` key."""
    return _GPU_PEAK_KEY.get(key, key)
