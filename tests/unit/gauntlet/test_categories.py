"""has_categories, composites (n/a included) and chain-of-thought generation against LLM Foundry:
its real evaluator (build_icl_evaluators + Trainer.eval) and its EvalGauntlet callback."""
import copy
import random
import re

import pytest
import torch
from test_generate import build  # noqa: E402

from foundry_ext.gauntlet import composite as comp
from foundry_ext.gauntlet.config import RunOptions
from foundry_ext.gauntlet.generate import greedy_generate
from foundry_ext.gauntlet.models import wrap
from foundry_ext.gauntlet.prompts import build_items, needs_prefix_space
from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
from foundry_ext.gauntlet.tasks import load_examples, task_from_cfg

from conftest import WORDS, write_jsonl  # noqa: E402

NO_BOOT = RunOptions(bootstrap_samples=0)


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


# --- LLM Foundry's EvalGauntlet on the same per-task scores ------------------------------------

class _Metric:
    def __init__(self, v):
        self.v = v

    def compute(self):
        return torch.tensor(self.v, dtype=torch.float64)


def foundry_composite(gauntlet_cfg: dict, acc: dict[str, float], sizes: dict[str, int],
                      subsets: dict[str, dict[str, float]]) -> dict[str, float]:
    """LLM Foundry's EvalGauntlet.eval_after_all on these scores: one evaluator per benchmark, or per
    category of a has_categories benchmark (label ``<task>/<k>-shot/<category>``)."""
    from types import SimpleNamespace

    from llmfoundry.callbacks.eval_gauntlet_callback import EvalGauntlet
    metric = 'InContextLearningMultipleChoiceAccuracy'
    evals: dict[str, float] = {}
    bsizes: dict[str, int] = {}
    for k, a in acc.items():
        if k in subsets:
            for cat, v in subsets[k].items():
                evals[f'{k}/{cat}'] = v
                bsizes[f'{k}/{cat}'] = sizes[k] // len(subsets[k])
        else:
            evals[k], bsizes[k] = a, sizes[k]
    cfg = copy.deepcopy(gauntlet_cfg)
    cb = EvalGauntlet(logger_keys=[f'metrics/{k}/{metric}' for k in evals], categories=cfg['categories'],
                      weighting=cfg.get('weighting', 'EQUAL'), subtract_random_baseline=cfg.get('subtract_random_baseline', True),
                      rescale_accuracy=cfg.get('rescale_accuracy', True), benchmark_sizes=bsizes,
                      averages=cfg.get('averages'))
    state = SimpleNamespace(eval_metrics={k: {metric: _Metric(v)} for k, v in evals.items()})
    out = cb.eval_after_all(state, None)
    return {k.removeprefix('icl/metrics/eval_gauntlet/'): v for k, v in out.items()}


GAUNTLET = {'categories': [
    {'name': 'knowledge', 'benchmarks': [{'name': 'mm', 'num_fewshot': 5, 'random_baseline': 0.25},
                                         {'name': 'qa', 'num_fewshot': 3, 'random_baseline': 0.0}]},
    {'name': 'reasoning', 'benchmarks': [{'name': 'x', 'num_fewshot': 0, 'random_baseline': 0.5},
                                         {'name': 'y', 'num_fewshot': 1, 'random_baseline': 0.25}]},
    {'name': 'reading', 'benchmarks': [{'name': 'gone', 'num_fewshot': 0, 'random_baseline': 0.5}]}],
    'averages': {'core': ['knowledge', 'reasoning', 'reading'], 'lost': ['reading']}}


@pytest.mark.parametrize('weighting', ['EQUAL', 'SAMPLE_SZ', 'LOG_SAMPLE_SZ'])
def test_composite_equals_llmfoundry_eval_gauntlet(weighting):
    cfg = {**GAUNTLET, 'weighting': weighting}
    subsets = {'mm/5-shot': {'algebra': 0.5, 'biology': 0.25, 'history': 0.75}}
    acc = {'mm/5-shot': 0.5, 'qa/3-shot': 0.125, 'x/0-shot': 0.75, 'y/1-shot': 0.4}  # mm: its categories' mean
    sizes = {'mm/5-shot': 300, 'qa/3-shot': 64, 'x/0-shot': 1000, 'y/1-shot': 7}
    theirs = foundry_composite(cfg, acc, sizes, subsets)
    cats, avgs = comp.scores(comp.parse_gauntlet(cfg), acc, sizes, why={'gone/0-shot': 'did not run'})
    for name in ('knowledge', 'reasoning'):
        assert cats[name].score == pytest.approx(theirs[name], abs=1e-12)
    assert avgs['core'].score == pytest.approx(theirs['core'], abs=1e-12)
    assert avgs['core'].reason == 'mean of 2 of 3 categories; left out: reading'
    # where LLM Foundry drops the category and reports 0 for an average of nothing, we say n/a and why
    assert 'reading' not in theirs and theirs['lost'] == 0
    assert cats['reading'].score is None and cats['reading'].reason == 'no score: gone/0-shot did not run'
    assert avgs['lost'].score is None and avgs['lost'].reason == 'no score: none of its categories has one (reading)'


def test_na_composite_is_reported_not_zero(tmp_path):
    from foundry_ext.gauntlet.report import csv_text, markdown, table
    from foundry_ext.gauntlet.results import GauntletResults, Score
    r = GauntletResults(model={'name': 'm', 'hash': 'h'}, max_seq_len=8,
                        categories={'c': Score(None, None, 'no score: x/0-shot did not run')},
                        averages={'core': Score(None, None, 'no score: none of its categories has one (c)')})
    for text in (table(r), markdown(r), csv_text(r)):
        assert 'n/a' in text and 'none of its categories has one' in text and '0.000' not in text
    assert r.metrics() == {}  # nothing logged for n/a entries


# --- has_categories and chain-of-thought generation vs LLM Foundry's evaluator ------------------

def _foundry_eval(model, tok, cfgs, tmp_path, seq=128, batch=8):
    """build_icl_evaluators + Trainer.eval; returns {evaluator label: accuracy} and, per generation
    evaluator, the generated texts in dataset order."""
    from composer import Callback, Trainer
    from composer.models import HuggingFaceModel
    from llmfoundry.eval.metrics import (
        InContextLearningGenerationExactMatchAccuracy,
        InContextLearningMultipleChoiceAccuracy,
    )
    from llmfoundry.utils.builders import build_icl_evaluators
    outputs: dict[str, list] = {}

    class Grab(Callback):
        def eval_after_forward(self, state, logger):
            if isinstance(state.outputs, list):
                outputs.setdefault(state.dataloader_label, []).extend(state.outputs)

    tmp_path.mkdir(exist_ok=True)
    evaluators, _ = build_icl_evaluators(copy.deepcopy(cfgs), tok, seq, batch, destination_dir=str(tmp_path))
    hf = HuggingFaceModel(model, tokenizer=tok, use_logits=True, eval_metrics=[
        InContextLearningGenerationExactMatchAccuracy(), InContextLearningMultipleChoiceAccuracy()])
    trainer = Trainer(model=hf, eval_dataloader=evaluators, device='cpu', progress_bar=False, log_to_console=False,
                      loggers=[], callbacks=[Grab()], precision='fp32')
    trainer.eval()
    model.eval()  # Composer leaves the module in train mode
    acc = {label: float(next(iter(m.values())).compute()) for label, m in trainer.state.eval_metrics.items()}
    return acc, outputs


def _cot_generation_file(lm, tok, path, n=14, shot=3):
    """A chain-of-thought generation task a random model scores about half on, whose outputs contain
    the cot delimiter and the stop strings. Answers are fixed 8-word phrases, so the longest answer
    (max_new_tokens) does not depend on the aliases chosen from the model's own outputs; the delimiter
    is a piece of the outputs themselves (the few-shot answers carry it, so it is chosen by trying)."""
    rng = random.Random(4)
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    rows = [{'context': s(2 + i % 5), 'chain_of_thought': ' ' + s(1 + i % 3), 'answer': s(8), 'aliases': []}
            for i in range(n)]  # prompts of varied lengths
    write_jsonl(path, rows)
    prefix = '' if needs_prefix_space(tok) else ' '

    def outputs(delim):
        t = task_from_cfg({'label': 'c', 'dataset_uri': str(path), 'icl_task_type': 'generation_task_with_answers',
                           'num_fewshot': [shot], 'cot_delimiter': delim})
        items = build_items(t, load_examples(t), tok, shot, 128)
        outs = greedy_generate(lm.step, [it.contexts[0] for it in items], items[0].max_new_tokens, tok.eos_token_id,
                               lm.pad_id)
        return [prefix + x for x in tok.batch_decode(outs, skip_special_tokens=True)]

    first = outputs(' #### ')
    cands = sorted({x[i:i + 2] for x in first for i in range(1, len(x) - 6) if re.fullmatch(r'\w\w', x[i:i + 2])})
    for delim in cands[:12]:
        seen = outputs(delim)
        if sum(delim in x[:-4] for x in seen) >= 3:
            break
    else:
        pytest.skip('no delimiter found in this model\'s outputs')
    stop = next(m.group() for x in seen for m in [re.search(r'\w{3}', x.split(delim)[-1][3:])] if m)
    finals = [x.split(stop)[0].split(delim)[-1].strip() for x in seen]
    hits = [i for i, f in enumerate(finals) if i % 2 == 0 and f]
    for i in range(n):
        rows[i]['aliases'] = [finals[i][:3]] if i in hits else ['zqzq']
    write_jsonl(path, rows)
    return delim, stop, hits, seen


def test_categories_and_cot_generation_equal_llmfoundry_evaluator(tok, tmp_path):
    """One Trainer.eval, two tasks on our foundry_mpt (sdpa, ALiBi): a multiple-choice task with
    has_categories (one dataloader per category, few-shot examples from the same category) and a
    chain-of-thought generation task (prompts of varied lengths, cot_delimiter, stop strings, aliases,
    do_normalization false). Same per-category accuracies, same generated texts, same per-example 0/1."""
    lm = wrap(build('foundry-alibi', len(tok)), tok, 'foundry-alibi', 128, 'test', 'cpu')
    rng = random.Random(2)
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    cats = ['zoo', 'art', 'math']  # file order is not sorted order
    mc = [{'query': s(3 + i % 4) + '?', 'choices': [s(1), s(2), s(1)], 'gold': i % 3, 'category': cats[i % 3]}
          for i in range(24)]
    mc_cfg = {'label': 'mcc', 'dataset_uri': write_jsonl(tmp_path / 'mcc.jsonl', mc), 'icl_task_type': 'multiple_choice',
              'num_fewshot': [2], 'has_categories': True, 'continuation_delimiter': '\nAnswer: '}
    delim, stop, hits, seen = _cot_generation_file(lm, tok, tmp_path / 'cot.jsonl')
    gen_cfg = {'label': 'cot', 'dataset_uri': str(tmp_path / 'cot.jsonl'), 'icl_task_type': 'generation_task_with_answers',
               'num_fewshot': [3], 'cot_delimiter': delim, 'early_stopping_criteria': [stop, '\n\n'],
               'do_normalization': False}
    tasks, errs = parse_tasks([mc_cfg, gen_cfg])
    r = run_gauntlet(lm, tasks, None, NO_BOOT, log=lambda s: None)
    assert not errs and not r.errors
    theirs, their_out = _foundry_eval(lm.model, tok, [mc_cfg, gen_cfg], tmp_path / 'foundry')
    b = r.benchmarks['mcc/2-shot']
    assert list(b.subsets) == ['art', 'math', 'zoo'] and [x.n for x in b.subsets.values()] == [8, 8, 8]
    for cat, sub in b.subsets.items():
        assert sub.accuracy == pytest.approx(theirs[f'mcc/2-shot/{cat}'], abs=1e-6), cat
    assert b.accuracy == pytest.approx(sum(x.accuracy for x in b.subsets.values()) / 3)
    g = r.benchmarks['cot/3-shot']
    assert [int(c) for c in g.correct] == [int(i in hits) for i in range(g.n)] and 0 < g.accuracy < 1
    cut = lambda x: re.split('|'.join([stop, '\n\n']), x)[0]  # noqa: E731
    assert [cut(x) for x in their_out['cot/3-shot']] == [cut(x) for x in seen]
    assert theirs['cot/3-shot'] == pytest.approx(g.accuracy, abs=1e-6)
    assert sum(delim in cut(x) for x in seen) >= 1  # the delimiter really splits some output
