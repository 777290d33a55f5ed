"""`composer scripts/eval.py yamls/eval/<name>.yaml [key=value ...]`: run a gauntlet, write the report.

The yaml is parsed into :class:`foundry_ext.gauntlet.config.EvalConfig` before torch or LLM Foundry
are imported. ``icl_tasks`` and ``eval_gauntlet`` are LLM Foundry's formats (inline, or a path to
their yaml files; relative ``dataset_uri``s are found from the working directory or from the tasks
yaml's folder and its parents, so LLM Foundry's own gauntlet yamls run unchanged).
Under ``composer -n N`` (or torchrun) every process loads the model on its own device and scores
1/N of each task's examples; rank 0 prints the table and writes the report.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from foundry_ext import env
from foundry_ext.errors import UserError, exit_with
from foundry_ext.gauntlet.config import EvalConfig, ModelSpec, parse_eval_config

USAGE = 'usage: composer scripts/eval.py <eval.yaml> [key=value ...]'


def prepare(argv: list[str]) -> EvalConfig:
    from foundry_ext.config.load import load
    if not argv or argv[0] in ('-h', '--help'):
        raise UserError(USAGE)
    # `model={hf_path: x}` replaces the whole mapping (a dotlist merge would keep run_dir too).
    whole = [o for o in argv[1:] if '=' in o and '.' not in o.split('=', 1)[0]
             and o.split('=', 1)[1].lstrip().startswith('{')]
    cfg = load(argv[0], [o for o in argv[1:] if o not in whole])
    if whole:
        from omegaconf import OmegaConf as om
        try:
            cfg.update(om.to_container(om.from_dotlist(whole), resolve=True))
        except Exception as e:  # omegaconf grammar errors
            raise UserError(f'cannot parse override(s) {whole}: {" ".join(str(e).split())[:200]}') from None
    return parse_eval_config(cfg)


def _raw_tasks(cfg: EvalConfig) -> tuple[list, Optional[Path]]:
    from foundry_ext.gauntlet.tasks import load_tasks_file
    t = cfg.icl_tasks
    if isinstance(t, str):
        return load_tasks_file(t), Path(t).parent
    return list(t or []), None


@contextlib.contextmanager
def _precision(precision: str, device: str) -> Iterator[None]:
    if precision == 'fp32':
        yield
        return
    import torch
    dtype = torch.bfloat16 if precision == 'amp_bf16' else torch.float16
    with torch.autocast(device_type=str(device).split(':')[0], dtype=dtype):
        yield


def _evaluate(spec: ModelSpec, cfg: EvalConfig, tasks: list, gauntlet: Any, errors: list[str],
              log: Callable[[str], None]) -> Any:
    import dataclasses

    from foundry_ext.gauntlet.models import load_model
    from foundry_ext.gauntlet.runner import run_gauntlet
    if cfg.max_seq_len and not spec.max_seq_len:
        spec = dataclasses.replace(spec, max_seq_len=cfg.max_seq_len)
    lm = load_model(spec, env.rank_device(cfg.device))
    log(f'model {lm.name} on {lm.device}, max_seq_len {lm.max_seq_len}')
    with _precision(cfg.precision, lm.device):
        return run_gauntlet(lm, tasks, gauntlet, cfg.run_options(), errors=errors, log=log)


def _results_or_model(spec: Union[ModelSpec, str], cfg: EvalConfig, tasks: list, gauntlet: Any,
                      log: Callable[[str], None]) -> Any:
    """`compare:` is either a results.json path or a model spec evaluated the same way."""
    from foundry_ext.gauntlet.results import GauntletResults
    if isinstance(spec, str):
        p = Path(spec)
        if not p.is_file():
            raise UserError(f'compare: results file {p} not found')
        try:
            return GauntletResults.from_json(json.loads(p.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f'compare: {p} is not a gauntlet results.json ({type(e).__name__}: {e})') from None
    return _evaluate(spec, cfg, tasks, gauntlet, [], log)


def run(cfg: EvalConfig, log: Callable[[str], None] = print) -> Any:
    from foundry_ext.gauntlet import composite as comp
    from foundry_ext.gauntlet.report import table, write_outputs
    from foundry_ext.gauntlet.runner import compare, parse_tasks
    raw, base = _raw_tasks(cfg)
    if cfg.limit:
        raw = [{**t, 'limit': t.get('limit', cfg.limit)} if isinstance(t, dict) else t for t in raw]
    tasks, errors = parse_tasks(raw, base)
    gauntlet = comp.parse_gauntlet(cfg.eval_gauntlet) if cfg.eval_gauntlet else None
    assert cfg.model is not None
    results = _evaluate(cfg.model, cfg, tasks, gauntlet, errors, log)
    results.run_name = cfg.run_name
    if cfg.compare:
        other = _results_or_model(cfg.compare, cfg, tasks, gauntlet, log)
        results.compare = compare(results, other, gauntlet, cfg.bootstrap_samples, cfg.seed, cfg.confidence_level)
    if env.rank() != 0:
        return results  # every rank holds the full results; rank 0 reports them
    out = Path(cfg.output_dir or f'runs/{results.run_name}/gauntlet')
    write_outputs(results, out)
    print(table(results))
    print(f'gauntlet report: {out}/report.md (results.json, results.csv, categories.png)')
    return results


def main(argv: Optional[list[str]] = None) -> int:
    env.set_offline_defaults()
    env.launcher_defaults()   # torchrun sets no NODE_RANK, which Composer needs
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = prepare(argv)
        distributed = env.init_distributed()
        rank = env.rank()
        results = run(cfg, log=print if rank == 0 else (lambda s: None))
    except UserError as e:
        return exit_with(e)
    if distributed:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 1 if not results.benchmarks else 0
