"""ICL task definitions and jsonl loading, in LLM Foundry's formats (pure Python, no torch).

A task is one entry of an LLM Foundry ``icl_tasks`` list (``label``, ``dataset_uri``,
``icl_task_type``, ``num_fewshot`` ...). Every problem with a task or its file is a
:class:`UserError` naming the task, the file and, for a bad line, its line number.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry_ext.errors import UserError
from foundry_ext.validation import did_you_mean

TASK_TYPES = ('multiple_choice', 'schema', 'language_modeling', 'generation_task_with_answers')
# Keys of an icl_tasks entry that we understand (LLM Foundry's, plus `limit`). metric_names is accepted
# and ignored (each task type has one metric here, LLM Foundry's default); hf_loading_vars and
# hf_parsing_map only apply to hf:// datasets, which are refused (offline). Any other key is an error,
# as in LLM Foundry (its dataset constructors reject unknown keyword arguments).
_KNOWN = {'label', 'dataset_uri', 'icl_task_type', 'num_fewshot', 'continuation_delimiter',
          'example_delimiter', 'prompt_string', 'question_prelimiter', 'prelimiter',
          'fewshot_random_seed', 'max_seq_len', 'batch_size', 'early_stopping_criteria',
          'do_normalization', 'cot_delimiter', 'strip_dataset', 'metric_names', 'limit',
          'has_categories', 'generation_kwargs', 'hf_loading_vars', 'hf_parsing_map'}


@dataclass
class TaskSpec:
    label: str
    dataset_uri: str
    icl_task_type: str
    num_fewshot: list[int]
    continuation_delimiter: str = ' '
    example_delimiter: str = '\n'
    prompt_string: str = ''
    prelimiter: str = ''
    fewshot_random_seed: int = 1234
    max_seq_len: int | None = None
    batch_size: int | None = None
    early_stopping_criteria: list[str] = field(default_factory=list)
    do_normalization: bool = True
    cot_delimiter: str = ''
    strip_dataset: bool = True
    limit: int | None = None
    max_new_tokens: int | None = None  # generation: generation_kwargs.max_new_tokens (else the longest answer)
    has_categories: bool = False       # one dataset per value of each example's 'category', as LLM Foundry

    def key(self, shot: int, max_seq_len: int) -> str:
        """Content hash of everything that changes this (task, shot)'s score except the model."""
        h = hashlib.sha256()
        cfg = {k: v for k, v in self.__dict__.items() if k not in ('num_fewshot', 'batch_size', 'label')}
        for k in ('max_new_tokens', 'has_categories'):
            if not cfg[k]:
                del cfg[k]  # keys of tasks without them stay as they were
        if self.icl_task_type == 'generation_task_with_answers':
            cfg['scorer'] = 2  # generation scoring was corrected to match LLM Foundry: older cached results are stale
        h.update(json.dumps({**cfg, 'shot': shot, 'max_seq_len': max_seq_len}, sort_keys=True).encode())
        try:
            h.update(Path(self.dataset_uri).read_bytes())
        except OSError:
            pass
        return h.hexdigest()[:16]


def task_from_cfg(cfg: dict[str, Any], base_dir: str | Path | None = None) -> TaskSpec:
    """One ``icl_tasks`` entry -> TaskSpec (validated; paths relative to ``base_dir`` if not found as given)."""
    if not isinstance(cfg, dict):
        raise UserError(f'an icl_tasks entry must be a mapping, got {type(cfg).__name__}: {cfg!r}')
    label = cfg.get('label')
    if not label:
        raise UserError(f'an icl_tasks entry has no label: {cfg!r}')
    where = f"icl task '{label}'"
    for k in cfg:
        if k not in _KNOWN:
            raise UserError(f'{where}: unknown key {k!r}{did_you_mean(str(k), _KNOWN)}')
    for k in ('dataset_uri', 'icl_task_type', 'num_fewshot'):
        if k not in cfg:
            raise UserError(f'{where}: missing key {k!r}')
    ttype = cfg['icl_task_type']
    if ttype not in TASK_TYPES:
        raise UserError(f'{where}: unknown icl_task_type {ttype!r}; expected one of {", ".join(TASK_TYPES)}')
    has_categories = cfg.get('has_categories', False)
    if not isinstance(has_categories, bool):
        raise UserError(f'{where}: has_categories must be true or false, got {has_categories!r}')
    shots = cfg['num_fewshot']
    shots = list(shots) if isinstance(shots, (list, tuple)) else [shots]
    if not shots or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shots):
        raise UserError(f'{where}: num_fewshot must be a list of non-negative integers, got {cfg["num_fewshot"]!r}')
    if 'prelimiter' in cfg and 'question_prelimiter' in cfg:
        raise UserError(f'{where}: give only one of prelimiter / question_prelimiter')
    uri = str(cfg['dataset_uri'])
    if '://' in uri:
        raise UserError(f'{where}: dataset_uri {uri!r} is remote; this harness is offline, '
                        'download the file and give its local path')
    uri = _resolve_uri(uri, base_dir)
    limit = cfg.get('limit')
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f'{where}: limit must be a positive integer, got {limit!r}')
    stops = cfg.get('early_stopping_criteria') or []
    if not isinstance(stops, (list, tuple)) or not all(isinstance(x, str) and x for x in stops):
        raise UserError(f'{where}: early_stopping_criteria must be a list of non-empty strings, got {stops!r}')
    try:
        re.compile('|'.join(stops))
    except re.error as e:
        raise UserError(f'{where}: early_stopping_criteria {stops!r} are joined into one regular expression '
                        f'(as LLM Foundry does) and that fails ({e}); escape the special characters') from None
    gen = ttype == 'generation_task_with_answers'
    max_new = _generation_kwargs(cfg.get('generation_kwargs'), where) if gen else None
    return TaskSpec(
        label=str(label), dataset_uri=uri, icl_task_type=ttype, num_fewshot=shots,
        continuation_delimiter=str(cfg.get('continuation_delimiter', ' ')),
        example_delimiter=str(cfg.get('example_delimiter', '\n')),
        prompt_string=str(cfg.get('prompt_string', '')),
        prelimiter=str(cfg.get('prelimiter', cfg.get('question_prelimiter', ''))),
        fewshot_random_seed=int(cfg.get('fewshot_random_seed', 1234)),
        max_seq_len=cfg.get('max_seq_len'), batch_size=cfg.get('batch_size'),
        early_stopping_criteria=list(stops), do_normalization=bool(cfg.get('do_normalization', True)),
        cot_delimiter=str(cfg.get('cot_delimiter', '')), strip_dataset=bool(cfg.get('strip_dataset', True)),
        limit=limit, max_new_tokens=max_new, has_categories=has_categories)


def _resolve_uri(uri: str, base_dir: str | Path | None) -> str:
    """A relative ``dataset_uri``: as given (from the working directory) if it exists, else relative to
    the tasks yaml's folder or one of its parents (LLM Foundry's own yamls live in ``scripts/eval/yamls``
    and name files relative to ``scripts/``, e.g. ``eval/local_data/...``), so they run from anywhere."""
    p = Path(uri)
    if p.is_absolute() or p.exists() or base_dir is None:
        return uri
    base = Path(base_dir).resolve()
    for d in [base, *list(base.parents)[:3]]:
        if (d / p).exists():
            return str(d / p)
    return uri


# generation_kwargs that leave greedy decoding as it is (LLM Foundry passes them to HF generate).
_GREEDY_NOOPS = {'use_cache': None, 'pad_token_id': None, 'do_sample': False, 'num_beams': 1, 'temperature': None,
                 'top_p': None, 'top_k': None}


def _generation_kwargs(kw: Any, where: str) -> int | None:
    """A generation task's generation_kwargs -> its max_new_tokens override (None: the longest answer).

    Decoding here is greedy, as LLM Foundry's default; a setting that would change it (sampling,
    beams, penalties, another eos) is refused rather than silently scored differently.
    """
    if kw is None:
        return None
    if not isinstance(kw, dict):
        raise UserError(f'{where}: generation_kwargs must be a mapping, got {kw!r}')
    for k, v in kw.items():
        if k == 'max_new_tokens':
            continue
        if k not in _GREEDY_NOOPS or (_GREEDY_NOOPS[k] is not None and v != _GREEDY_NOOPS[k]):
            raise UserError(f'{where}: generation_kwargs {k}={v!r} is not supported (greedy decoding only; '
                            'supported: max_new_tokens, use_cache, pad_token_id, do_sample: false, num_beams: 1, '
                            'and temperature/top_p/top_k, which greedy decoding ignores); remove it')
    if 'max_new_tokens' in kw:
        m = kw['max_new_tokens']
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise UserError(f'{where}: generation_kwargs max_new_tokens must be a positive integer, got {m!r}')
        return m
    return None


def _need(obj: dict, key: str, types, where: str) -> Any:
    if key not in obj:
        raise UserError(f'{where}: missing field {key!r}')
    v = obj[key]
    if not isinstance(v, types) or isinstance(v, bool):
        raise UserError(f'{where}: field {key!r} has the wrong type ({type(v).__name__})')
    return v


def _check_example(ex: dict, ttype: str, where: str) -> None:
    if ttype == 'multiple_choice':
        _need(ex, 'query', str, where)
        choices = _need(ex, 'choices', list, where)
        if not choices or not all(isinstance(c, str) for c in choices):
            raise UserError(f"{where}: 'choices' must be a non-empty list of strings")
        n = len(choices)
    elif ttype == 'schema':
        opts = _need(ex, 'context_options', list, where)
        if not opts or not all(isinstance(c, str) for c in opts):
            raise UserError(f"{where}: 'context_options' must be a non-empty list of strings")
        _need(ex, 'continuation', str, where)
        n = len(opts)
    elif ttype == 'language_modeling':
        _need(ex, 'context', str, where)
        _need(ex, 'continuation', str, where)
        return
    else:  # generation_task_with_answers
        _need(ex, 'context', str, where)
        _need(ex, 'answer', str, where)
        al = ex.get('aliases', [])
        if not isinstance(al, list) or not all(isinstance(a, str) for a in al):
            raise UserError(f"{where}: 'aliases' must be a list of strings")
        return
    gold = _need(ex, 'gold', int, where)
    if not 0 <= gold < n:
        raise UserError(f"{where}: gold {gold} is out of range for {n} options (0..{n - 1})")


def load_examples(task: TaskSpec) -> list[dict]:
    """Read and validate the task's jsonl file (first ``limit`` examples); strip strings like LLM Foundry."""
    path = Path(task.dataset_uri)
    where = f"icl task '{task.label}'"
    if not path.is_file():
        raise UserError(f'{where}: dataset file {path} not found'
                        + ('; generate the starter tasks with `make eval-data`' if 'starter' in str(path) else ''))
    out: list[dict] = []
    linenos: list[int] = []
    per_category: dict[Any, int] = {}
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f'{where}: {path} line {lineno}: malformed JSON ({e.msg})') from None
            if not isinstance(ex, dict):
                raise UserError(f'{where}: {path} line {lineno}: expected a JSON object')
            _check_example(ex, task.icl_task_type, f'{where}: {path} line {lineno}')
            if task.has_categories:
                cat = _category(ex, f'{where}: {path} line {lineno}')
                per_category[cat] = per_category.get(cat, 0) + 1
                if task.limit is not None and per_category[cat] > task.limit:
                    continue  # the first `limit` examples of every category
            if task.strip_dataset:
                raw = ex
                ex = {k: v.strip() if isinstance(v, str) else v for k, v in ex.items()}
                if task.icl_task_type == 'generation_task_with_answers':
                    # LLM Foundry sizes max_new_tokens (and the context budget) from the answers
                    # *before* it strips them: keep the unstripped strings for that.
                    ex[RAW_KEY] = {k: raw[k] for k in ('answer', 'chain_of_thought') if k in raw}
            if task.has_categories:
                ex[CATEGORY_KEY] = cat  # as in the file: LLM Foundry partitions before it strips
            out.append(ex)
            linenos.append(lineno)
            if task.limit is not None and not task.has_categories and len(out) >= task.limit:
                break
    if not out:
        raise UserError(f'{where}: {path} has no examples')
    if task.icl_task_type == 'generation_task_with_answers':
        _check_cot(out, linenos, where, path)
    return out


# Where load_examples keeps a generation example's unstripped answer / chain_of_thought.
RAW_KEY = '_unstripped'
# Where load_examples keeps an example's category (has_categories), unstripped.
CATEGORY_KEY = '_category'


def _category(ex: dict, where: str) -> str | int:
    if 'category' not in ex:
        raise UserError(f"{where}: no 'category' (has_categories: true needs one on every example)")
    c = ex['category']
    if not isinstance(c, (str, int)) or isinstance(c, bool):
        raise UserError(f"{where}: 'category' must be a string, got {type(c).__name__} {c!r}")
    return c


def split_categories(task: TaskSpec, examples: list[dict]) -> list[tuple[str | None, list[dict]]]:
    """``[(category, its examples in file order)]`` sorted by category, as LLM Foundry builds one
    dataset (with its own few-shot sampling) per category; ``[(None, examples)]`` without categories."""
    if not task.has_categories:
        return [(None, examples)]
    groups: dict[Any, list[dict]] = {}
    for ex in examples:
        groups.setdefault(ex[CATEGORY_KEY], []).append(ex)
    try:
        cats = sorted(groups)
    except TypeError:
        raise UserError(f"icl task '{task.label}': the 'category' values mix numbers and strings; "
                        'make them all strings') from None
    return [(str(c), groups[c]) for c in cats]


def _check_cot(examples: list[dict], linenos: list[int], where: str, path: Path) -> None:
    """chain_of_thought on every example or on none: LLM Foundry reads a missing one as null and
    writes the text 'None' into the few-shot answers, so a mixed file cannot score the same."""
    has = ['chain_of_thought' in e for e in examples]
    if any(has) and not all(has):
        i = has.index(False)
        raise UserError(f"{where}: {path} line {linenos[i]}: no 'chain_of_thought' while other examples have one "
                        f'({has.count(False)} of {len(has)} lack it); give it on every example or on none')


def check_fewshot(task: TaskSpec, shot: int, n_examples: int, category: str | None = None) -> None:
    if shot > n_examples - 1:
        where = f"icl task '{task.label}'" + (f" category '{category}'" if category is not None else '')
        raise UserError(f'{where}: num_fewshot {shot} is larger than the {n_examples - 1} '
                        'other examples available; lower num_fewshot or add examples')


def load_tasks_file(path: str | Path) -> list[dict]:
    """An LLM Foundry tasks yaml (``icl_tasks: [...]``) -> list of raw entries."""
    from omegaconf import OmegaConf as om
    p = Path(path)
    if not p.is_file():
        raise UserError(f'icl_tasks file {p} not found')
    cfg = om.to_container(om.load(p), resolve=True)
    tasks = cfg.get('icl_tasks') if isinstance(cfg, dict) else cfg
    if not isinstance(tasks, list):
        raise UserError(f'{p}: expected a list under icl_tasks')
    return tasks
