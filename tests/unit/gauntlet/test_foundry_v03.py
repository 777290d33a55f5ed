"""LLM Foundry's own v0.3 gauntlet (eval_gauntlet_v0.3.yaml + tasks_v0.3.yaml, unedited) runs unchanged
from LLM Foundry's repository layout, and its composite equals LLM Foundry's EvalGauntlet on the same
per-task scores. Real task files come from the shared eval_data folder where it has them; the others
are stand-ins of the right shape generated here. Skipped when that folder is absent."""
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from test_categories import foundry_composite  # noqa: E402

from conftest import ROOT, WORDS, write_jsonl  # noqa: E402


def _eval_data() -> Path | None:
    for p in [os.environ.get('FOUNDRY_EXT_EVAL_DATA'), ROOT.parent / 'shared' / 'eval_data',
              ROOT.parent.parent / 'shared' / 'eval_data']:
        if p and (Path(p) / 'yamls' / 'tasks_v0.3.yaml').is_file():
            return Path(p)
    return None


def _stand_in(task: dict, n: int, rng: random.Random) -> list[dict]:
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    ty = task['icl_task_type']
    rows: list[dict] = []
    for i in range(n):
        if ty == 'multiple_choice':
            rows.append({'query': s(6) + '?', 'choices': [s(2), s(1), s(3), s(2)], 'gold': i % 4})
        elif ty == 'schema':
            rows.append({'context_options': [s(3) + ' he', s(3) + ' she'], 'continuation': s(3), 'gold': i % 2})
        elif ty == 'language_modeling':
            rows.append({'context': s(6), 'continuation': s(1 + i % 2)})
        else:
            row = {'context': s(5), 'answer': s(1), 'aliases': [s(1)]}
            if task.get('cot_delimiter'):
                row['chain_of_thought'] = s(4)
            rows.append(row)
        if task.get('has_categories'):
            rows[-1]['category'] = ['history', 'algebra', 'art'][i % 3]
    return rows


@pytest.mark.skipif(_eval_data() is None, reason='shared eval_data folder (LLM Foundry v0.3 yamls) not found')
def test_llmfoundry_v03_gauntlet_runs_unchanged(tmp_path, tiny_tokenizer):
    from omegaconf import OmegaConf as om
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from foundry_ext.commands.eval import run
    from foundry_ext.gauntlet.config import parse_eval_config
    src = _eval_data()
    scripts = tmp_path / 'llm-foundry' / 'scripts'  # LLM Foundry's layout: yamls name files relative to scripts/
    (scripts / 'eval' / 'yamls').mkdir(parents=True)
    for y in ('tasks_v0.3.yaml', 'eval_gauntlet_v0.3.yaml'):
        shutil.copy(src / 'yamls' / y, scripts / 'eval' / 'yamls' / y)
    tasks = om.to_container(om.load(src / 'yamls' / 'tasks_v0.3.yaml'))['icl_tasks']
    rng = random.Random(0)
    real = 0
    for t in tasks:
        dest = scripts / t['dataset_uri']
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = src / Path(t['dataset_uri']).relative_to('eval/local_data')
        if have.is_file():
            shutil.copy(have, dest)
            real += 1
        else:  # enough examples for the task's largest num_fewshot
            write_jsonl(dest, _stand_in(t, 3 * (max(t['num_fewshot']) + 2) if t.get('has_categories')
                                        else max(t['num_fewshot']) + 4, rng))
    assert real >= 10
    hf = tmp_path / 'hf'
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2)).save_pretrained(hf)
    tok.save_pretrained(hf)
    yamls = scripts / 'eval' / 'yamls'
    cfg = parse_eval_config({'model': {'hf_path': str(hf)}, 'icl_tasks': str(yamls / 'tasks_v0.3.yaml'),
                             'eval_gauntlet': str(yamls / 'eval_gauntlet_v0.3.yaml'), 'limit': 30, 'max_seq_len': 512,
                             'bootstrap_samples': 0, 'device': 'cpu', 'output_dir': str(tmp_path / 'out')})
    r = run(cfg, log=lambda s: None)  # from this checkout, not from scripts/: paths resolve from the yaml
    assert not r.errors, r.errors
    want = {f"{t['label']}/{k}-shot" for t in tasks for k in t['num_fewshot']}
    assert set(r.benchmarks) == want and len(want) == 34  # 32 tasks, two of them at two shot counts
    assert list(r.benchmarks['mmlu/5-shot'].subsets) == ['algebra', 'art', 'history']
    assert list(r.benchmarks['jeopardy/3-shot'].subsets) == ['algebra', 'art', 'history']
    gsm = r.benchmarks['gsm8k/0-shot']
    assert gsm.icl_task_type == 'generation_task_with_answers' and gsm.n == 4
    # the composite: LLM Foundry's EvalGauntlet on the same per-task (per-category) scores
    g_cfg = om.to_container(om.load(yamls / 'eval_gauntlet_v0.3.yaml'))['eval_gauntlet']
    theirs = foundry_composite(g_cfg, {k: b.accuracy for k, b in r.benchmarks.items()},
                               {k: b.n for k, b in r.benchmarks.items()},
                               {k: {c: s.accuracy for c, s in b.subsets.items()} for k, b in r.benchmarks.items()
                                if b.subsets})
    ours = {**{k: v.score for k, v in r.categories.items()}, **{k: v.score for k, v in r.averages.items()}}
    assert set(ours) == set(theirs) and len(ours) == 6
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    res = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert res['averages']['core_average']['score'] == pytest.approx(theirs['core_average'], abs=1e-6)
