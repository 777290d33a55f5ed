"""`composer scripts/eval.py yamls/eval/<name>.yaml [key=value ...]`: run a gauntlet, write the report.

The yaml is validated before torch or LLM Foundry are imported. ``icl_tasks`` and
``eval_gauntlet`` are LLM Foundry's formats (inline, or a path to their yaml files).
Under ``composer -n N`` (or torchrun) every process loads the model on its own device and scores
1/N of each task's examples; rank 0 prints the table and writes the report.
"""
from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

from foundry_ext import env
from foundry_ext.errors import UserError, exit_with

USAGE = 'usage: composer scripts/eval.py <eval.yaml> [key=value ...]'
EVAL_KEYS: dict[str, tuple] = {
    'run_name': (str,), 'seed': (int,), 'device': (str,), 'max_seq_len': (int,),
    'device_eval_batch_size': (int,), 'max_tokens_per_batch': (int,), 'model': (dict,),
    'compare': (dict, str), 'icl_tasks': (list, str), 'eval_gauntlet': (dict, str), 'cache_dir': (str,),
    'bootstrap_samples': (int,), 'confidence_level': (float,), 'output_dir': (str,), 'variables': (dict,),
    'limit': (int,), 'kv_cache': (bool,), 'precision': (str,),
}


def _check(cfg: dict[str, Any]) -> None:
    for k, v in cfg.items():
        if k not in EVAL_KEYS:
            near = difflib.get_close_matches(k, list(EVAL_KEYS), n=1, cutoff=0.6)
            raise UserError(f"unknown eval config key '{k}'" + (f"; did you mean '{near[0]}'?" if near else
                            f"; valid keys: {', '.join(sorted(EVAL_KEYS))}"))
        types = EVAL_KEYS[k]
        if v is not None and not (isinstance(v, types) or (float in types and isinstance(v, int))) \
                or isinstance(v, bool) and bool not in types:
            raise UserError(f"eval config key '{k}' should be {' or '.join(t.__name__ for t in types)}, "
                            f'got {type(v).__name__} {v!r}')
    for k in ('model', 'icl_tasks'):
        if not cfg.get(k):
            raise UserError(f"eval config needs '{k}'")


def prepare(argv: list[str]) -> dict[str, Any]:
    from foundry_ext.config.load import load
    if not argv or argv[0] in ('-h', '--help'):
        raise UserError(USAGE)
    # `model={hf_path: x}` replaces the whole mapping (a plain dotlist merge would keep run_dir too).
    whole = [o for o in argv[1:] if '=' in o and '.' not in o.split('=', 1)[0]
             and o.split('=', 1)[1].lstrip().startswith('{')]
    cfg = load(argv[0], [o for o in argv[1:] if o not in whole])
    if whole:
        from omegaconf import OmegaConf as om
        try:
            cfg.update(om.to_container(om.from_dotlist(whole), resolve=True))
        except Exception as e:  # omegaconf grammar errors
            raise UserError(f'cannot parse override(s) {whole}: {" ".join(str(e).split())[:200]}') from None
    _check(cfg)
    return cfg


def _raw_tasks(cfg: dict) -> tuple[list, Path | None]:
    from foundry_ext.gauntlet.tasks import load_tasks_file
    t = cfg['icl_tasks']
    if isinstance(t, str):
        return load_tasks_file(t), Path(t).parent
    return t, None


def _results_or_model(spec, cfg, tasks, gauntlet, errors, log):
    """`compare:` is either a results.json path or a model spec evaluated the same way."""
    if isinstance(spec, str):
        p = Path(spec)
        if not p.is_file():
            raise UserError(f'compare: results file {p} not found')
        return json.loads(p.read_text())
    return _evaluate(spec, cfg, tasks, gauntlet, errors, log)


def _evaluate(model_spec, cfg, tasks, gauntlet, errors, log):
    from foundry_ext.gauntlet.models import load_model
    from foundry_ext.gauntlet.runner import run_gauntlet
    spec = dict(model_spec)
    if cfg.get('max_seq_len') and not spec.get('max_seq_len'):
        spec['max_seq_len'] = cfg['max_seq_len']
    lm = load_model(spec, env.rank_device(cfg.get('device')))
    log(f'model {lm.name} on {lm.device}, max_seq_len {lm.max_seq_len}')
    return run_gauntlet(lm, tasks, gauntlet, cfg.get('max_seq_len'), cfg.get('device_eval_batch_size', 64),
                        cfg.get('max_tokens_per_batch', 16384), cfg.get('cache_dir'),
                        cfg.get('bootstrap_samples', 1000), cfg.get('seed', 17), cfg.get('confidence_level', 0.95),
                        errors, log, cfg.get('kv_cache', True))


def run(cfg: dict[str, Any], log=print) -> dict[str, Any]:
    from foundry_ext.gauntlet import composite as comp
    from foundry_ext.gauntlet.report import table, write_outputs
    from foundry_ext.gauntlet.runner import compare, parse_tasks
    raw, base = _raw_tasks(cfg)
    if cfg.get('limit'):
        raw = [{**t, 'limit': t.get('limit', cfg['limit'])} if isinstance(t, dict) else t for t in raw]
    tasks, errors = parse_tasks(raw, base)
    gauntlet = comp.parse_gauntlet(cfg['eval_gauntlet']) if cfg.get('eval_gauntlet') else None
    if gauntlet is not None:
        declared = {comp.bench_key(t.label, s) for t in tasks for s in t.num_fewshot}
        gauntlet, errs = comp.check_benchmarks(gauntlet, declared)
        errors += errs
    results = _evaluate(cfg['model'], cfg, tasks, gauntlet, errors, log)
    results['run_name'] = cfg.get('run_name', 'eval')
    if cfg.get('compare'):
        other = _results_or_model(cfg['compare'], cfg, tasks, gauntlet, [], log)
        results['compare'] = compare(results, other, gauntlet, cfg.get('bootstrap_samples', 1000),
                                     cfg.get('seed', 17), cfg.get('confidence_level', 0.95))
    if env.rank() != 0:
        return results  # every rank holds the full results; rank 0 reports them
    out = Path(cfg.get('output_dir') or f"runs/{results['run_name']}/gauntlet")
    write_outputs(results, out)
    print(table(results))
    print(f'gauntlet report: {out}/report.md (results.json, results.csv, categories.png)')
    return results


def main(argv: list[str] | None = None) -> int:
    env.set_offline_defaults()
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
    return 1 if not results['benchmarks'] else 0
