"""Typed options of the gauntlet: the eval yaml (:class:`EvalConfig`), the model to load
(:class:`ModelSpec`), the scoring run (:class:`RunOptions`) and the in-training ``gauntlet``
callback (:class:`GauntletCallbackConfig`). No torch: parsed by :func:`foundry_ext.validation.parse`
before anything heavy is imported (``config/validate.py`` runs the same parse for training yamls).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from foundry_ext.errors import UserError
from foundry_ext.validation import ConfigError, parse, section

PRECISIONS = ('fp32', 'amp_bf16', 'amp_fp16')
_BATCHES = re.compile(r'^\s*(\d+)\s*ba\s*$')


@dataclass
class RunOptions:
    """How :func:`foundry_ext.gauntlet.runner.run_gauntlet` scores (everything but the model,
    the tasks and the composite definition)."""
    max_seq_len: Optional[int] = None    # context length for prompts (None: the model's own)
    batch_rows: int = 64                 # rows per forward pass (a task's batch_size wins)
    max_tokens: int = 16384              # padded tokens per forward pass (bounds memory)
    kv_cache: bool = True                # reuse KV caches (shared MC contexts, generation)
    cache_dir: Optional[str] = None      # per-example results cache (None: no cache)
    bootstrap_samples: int = 1000        # resamples for the confidence intervals (0: none)
    seed: int = 17                       # bootstrap seed
    confidence_level: float = 0.95       # interval level

    def __post_init__(self) -> None:
        where = section('gauntlet')
        for name in ('batch_rows', 'max_tokens'):
            if getattr(self, name) < 1:
                raise UserError(f'{where}: {name} must be an integer >= 1, got {getattr(self, name)!r}')
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise UserError(f'{where}: max_seq_len must be an integer >= 1, got {self.max_seq_len!r}')
        if self.bootstrap_samples < 0:
            raise UserError(f'{where}: bootstrap_samples must be >= 0, got {self.bootstrap_samples!r}')
        if not 0.0 < self.confidence_level < 1.0:
            raise UserError(f'{where}: confidence_level must be in (0, 1), got {self.confidence_level!r}')


@dataclass
class ModelSpec:
    """The model to evaluate: exactly one of ``checkpoint`` / ``run_dir`` / ``hf_path``."""
    checkpoint: Optional[str] = None     # a Composer checkpoint (.pt) of an LLM Foundry / HF model
    run_dir: Optional[str] = None        # a training run folder: its latest checkpoint
    hf_path: Optional[str] = None        # an HF model folder
    tokenizer: Optional[str] = None      # tokenizer folder (default: the one inside the model)
    max_seq_len: Optional[int] = None    # override the model's context length (RoPE/ALiBi)
    name: Optional[str] = None           # display name in the report

    def __post_init__(self) -> None:
        where = section('model')
        given = [k for k in ('checkpoint', 'run_dir', 'hf_path') if getattr(self, k)]
        if len(given) != 1:
            raise UserError(f'{where}: give exactly one of checkpoint (Composer .pt), run_dir (a training run '
                            f'folder) or hf_path (HF model folder); got {given or "none"}')
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise UserError(f'{where}: max_seq_len must be an integer >= 1, got {self.max_seq_len!r}')


@dataclass
class EvalConfig:
    """``composer scripts/eval.py <yaml>``: the whole eval yaml."""
    model: Optional[ModelSpec] = None                  # the model to evaluate (required)
    icl_tasks: Union[list, str, None] = None           # LLM Foundry icl_tasks: a list or a tasks yaml (required)
    eval_gauntlet: Union[dict, str, None] = None       # LLM Foundry eval_gauntlet: a mapping or a yaml
    compare: Union[ModelSpec, str, None] = None        # a second model, or a results.json to compare with
    run_name: str = 'eval'                             # report title; default output_dir runs/<run_name>/gauntlet
    output_dir: Optional[str] = None                   # where report.md, results.json ... go
    cache_dir: Optional[str] = None                    # per-example results cache
    seed: int = 17                                     # bootstrap seed
    device: Optional[str] = None                       # cpu / cuda (default: cuda when available)
    precision: str = 'fp32'                            # fp32 | amp_bf16 | amp_fp16 (autocast while scoring)
    max_seq_len: Optional[int] = None                  # prompt context length (default: the model's)
    device_eval_batch_size: int = 64                   # rows per forward pass
    max_tokens_per_batch: int = 16384                  # padded tokens per forward pass
    bootstrap_samples: int = 1000                      # 0: no intervals
    confidence_level: float = 0.95
    limit: Optional[int] = None                        # first N examples of every task (of every category)
    kv_cache: bool = True                              # reuse KV caches (shared contexts, generation)
    variables: dict = field(default_factory=dict)      # free-form, for ${variables.x} interpolation

    def __post_init__(self) -> None:
        for k in ('model', 'icl_tasks'):
            if not getattr(self, k):
                raise UserError(f"eval config needs '{k}'")
        if self.precision not in PRECISIONS:
            raise UserError(f"eval config key 'precision' must be one of {', '.join(PRECISIONS)}, "
                            f'got {self.precision!r}')
        if self.limit is not None and self.limit < 1:
            raise UserError(f"eval config key 'limit' must be an integer >= 1, got {self.limit!r}")
        self.run_options()  # range checks of the scoring options

    def run_options(self) -> RunOptions:
        try:
            return RunOptions(max_seq_len=self.max_seq_len, batch_rows=self.device_eval_batch_size,
                              max_tokens=self.max_tokens_per_batch, kv_cache=self.kv_cache, cache_dir=self.cache_dir,
                              bootstrap_samples=self.bootstrap_samples, seed=self.seed,
                              confidence_level=self.confidence_level)
        except UserError as e:  # name the yaml keys, not RunOptions' fields
            msg = str(e).replace('batch_rows', 'device_eval_batch_size').replace('max_tokens ', 'max_tokens_per_batch ')
            raise UserError(msg.replace('gauntlet: ', 'eval config: ', 1)) from None


def parse_eval_config(data: Mapping[str, Any]) -> EvalConfig:
    """The eval yaml (after overrides) -> :class:`EvalConfig`; every problem one line."""
    try:
        return parse(EvalConfig, data, '')
    except ConfigError as e:
        raise ConfigError([_eval_wording(p) for p in e.problems]) from None


def _eval_wording(problem: str) -> str:
    m = re.match(r'unknown key (\S+?)(;.*)?$', problem)
    if m:
        return f"unknown eval config key '{m.group(1)}'{m.group(2) or ''}"
    if problem.startswith('eval config') or re.match(r'(model|compare)[.:]', problem):
        return problem  # already names where it is
    return f'eval config: {problem}'


@dataclass
class GauntletCallbackConfig:
    """``callbacks.gauntlet``: run the gauntlet every ``interval`` batches during training."""
    icl_tasks: Union[str, list, None] = None           # LLM Foundry icl_tasks: a tasks yaml or a list (required)
    eval_gauntlet: Union[str, dict, None] = None       # LLM Foundry eval_gauntlet: a yaml or a mapping
    interval: Union[str, int] = '100ba'                # every N batches ('100ba' or 100)
    max_seq_len: Optional[int] = None                  # prompt context length (default: the model's)
    batch_size: int = 64                               # rows per forward pass
    limit: Optional[int] = None                        # first N examples of every task (of every category)
    eval_at_fit_end: bool = True                       # also run once when training ends

    def __post_init__(self) -> None:
        where = section('gauntlet')
        if not self.icl_tasks:
            raise UserError(f'{where}: icl_tasks is required (a tasks yaml or a list of LLM Foundry icl_tasks)')
        if self.interval_batches < 1:
            raise UserError(f'{where}: interval must be in batches (e.g. 100ba), got {self.interval!r}')
        if self.batch_size < 1:
            raise UserError(f'{where}: batch_size must be an integer >= 1, got {self.batch_size!r}')
        if self.limit is not None and self.limit < 1:
            raise UserError(f'{where}: limit must be an integer >= 1, got {self.limit!r}')
        if self.max_seq_len is not None and self.max_seq_len < 1:
            raise UserError(f'{where}: max_seq_len must be an integer >= 1, got {self.max_seq_len!r}')

    @property
    def interval_batches(self) -> int:
        if isinstance(self.interval, int):
            return self.interval
        m = _BATCHES.match(self.interval)
        return int(m.group(1)) if m else 0


def check_callback_files(cfg: GauntletCallbackConfig) -> None:
    """Data checks before training starts: the tasks / gauntlet yamls exist and the gauntlet parses."""
    where = section('gauntlet')
    for key in ('icl_tasks', 'eval_gauntlet'):
        v = getattr(cfg, key)
        if isinstance(v, str) and not Path(v).is_file():
            raise UserError(f'{where}: {key} file {v} not found')
    if cfg.eval_gauntlet is not None:
        from foundry_ext.gauntlet.composite import parse_gauntlet
        try:
            parse_gauntlet(cfg.eval_gauntlet)
        except UserError as e:
            raise UserError(f'{where}: {e}') from None
