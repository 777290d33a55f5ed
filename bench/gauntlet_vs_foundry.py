"""Our gauntlet scorer vs LLM Foundry's own ICL evaluator, same model, same real tasks, one run.

    python bench/gauntlet_vs_foundry.py [--checkpoint runs/demo/checkpoints/latest-rank0.pt]
                                        [--eval-data ../shared/eval_data] [--limit 200]

Tasks (LLM Foundry Gauntlet v0.3 settings): copa, piqa, arc_easy, winograd, lambada_openai, the
first ``--limit`` examples of each (written to a temp folder that both sides read), plus one
``generation_task_with_answers`` task, arithmetic_gen (3-shot, stop at a newline): the starter
gauntlet's held-out sums generated from ``data/corpus`` when it exists, else
``symbolic_problem_solving/simple_arithmetic_withspaces.jsonl`` rewritten as context/answer pairs
(in the temp folder, never kept). LLM Foundry: ``build_icl_evaluators`` + Composer
``Trainer.eval`` on ``ComposerMPTCausalLM`` with the same weights (generation: its HF
``generate``, left-padded batches). Ours: :func:`foundry_ext.gauntlet.runner.run_gauntlet` (no
cache, no bootstrap).
Timed per task for both: dataset building + tokenization + scoring (not the model load, not
Trainer init). Accuracies must agree within 0.1 point; speed goal: ours <= 0.5x their wall time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

TASKS = [  # label, file, type, num_fewshot, continuation_delimiter
    ('copa', 'commonsense_reasoning/copa.jsonl', 'multiple_choice', 0, ' '),
    ('piqa', 'commonsense_reasoning/piqa.jsonl', 'multiple_choice', 0, '\nAnswer: '),
    ('arc_easy', 'world_knowledge/arc_easy.jsonl', 'multiple_choice', 3, '\nAnswer: '),
    ('winograd', 'language_understanding/winograd_wsc.jsonl', 'schema', 3, ' '),
    ('lambada_openai', 'language_understanding/lambada_openai.jsonl', 'language_modeling', 0, ' '),
]


def _model(args):
    from foundry_ext.gauntlet.models import latest_checkpoint, load_composer_checkpoint, wrap
    ck = Path(args.checkpoint) if args.checkpoint else None
    if ck is None and (ROOT / 'runs' / 'demo' / 'checkpoints').is_dir():
        ck = latest_checkpoint(ROOT / 'runs' / 'demo')
    if ck is not None:
        lm = load_composer_checkpoint(ck, device='cpu', max_seq_len=args.max_seq_len)
        return lm, f'demo checkpoint {ck}'
    import torch
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(ROOT / 'data' / 'tokenizer'))
    torch.manual_seed(0)
    cfg = MPTConfig(d_model=128, n_heads=4, n_layers=4, max_seq_len=args.max_seq_len, vocab_size=len(tok),
                    init_device='cpu', no_bias=True,
                    attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'alibi': False})
    return wrap(MPTForCausalLM(cfg), tok, 'random tiny MPT', args.max_seq_len, device='cpu'), \
        'random tiny MPT (no runs/demo checkpoint)'


GEN_LABEL, GEN_SHOT = 'arithmetic_gen', 3


def _generation_task(eval_data: Path, tmp: Path, limit: int) -> tuple[dict, str]:
    """The generation task's icl_tasks entry (file written to ``tmp``) and where its examples came from."""
    import json
    import random
    corpus = ROOT / 'data' / 'corpus'
    if (corpus / 'arithmetic' / 'val.jsonl').is_file():
        from foundry_ext.gauntlet.starter import arithmetic_gen
        rows = arithmetic_gen(corpus, random.Random(f'17:{GEN_LABEL}'), limit)
        src = f'starter arithmetic_gen from {corpus}'
    else:
        f = eval_data / 'symbolic_problem_solving' / 'simple_arithmetic_withspaces.jsonl'
        rows = []
        for ln in f.read_text(encoding='utf-8').splitlines()[:limit]:
            ex = json.loads(ln)
            ans = ex['continuation'].strip()
            rows.append({'context': ex['context'], 'answer': ans, 'aliases': [ans]})
        src = f'{f.name} as generation'
    path = tmp / f'{GEN_LABEL}.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows), encoding='utf-8')
    return ({'label': GEN_LABEL, 'dataset_uri': str(path), 'icl_task_type': 'generation_task_with_answers',
             'num_fewshot': [GEN_SHOT], 'early_stopping_criteria': ['\n']}, src)


_METRIC = {'language_modeling': 'InContextLearningLMAccuracy',
           'generation_task_with_answers': 'InContextLearningGenerationExactMatchAccuracy'}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--eval-data', default=str(ROOT.parent / 'shared' / 'eval_data'))
    p.add_argument('--limit', type=int, default=200, help='first N examples per task (default 200)')
    p.add_argument('--max-seq-len', type=int, default=512)
    p.add_argument('--batch-size', type=int, default=32, help='rows per forward pass, both sides')
    a = p.parse_args()
    eval_data = Path(a.eval_data)
    if not eval_data.is_dir():
        print(f'eval data folder {eval_data} not found; pass --eval-data')
        print('BENCH gauntlet speed_vs_foundry=nan goal<=0.5 SKIP')
        return 0
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm, what = _model(a)
    tmp = Path(tempfile.mkdtemp(prefix='gauntlet-bench-'))
    icl_tasks = []
    for label, f, ty, shot, cd in TASKS:
        lines = [ln for ln in (eval_data / f).read_text(encoding='utf-8').splitlines() if ln.strip()][:a.limit]
        (tmp / f'{label}.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
        icl_tasks.append({'label': label, 'dataset_uri': str(tmp / f'{label}.jsonl'), 'icl_task_type': ty,
                          'num_fewshot': [shot], 'continuation_delimiter': cd})
    gen_task, gen_src = _generation_task(eval_data, tmp, a.limit)
    icl_tasks.append(gen_task)
    rows = [(label, ty, shot) for label, _, ty, shot, _ in TASKS] + \
        [(GEN_LABEL, 'generation_task_with_answers', GEN_SHOT)]
    print(f'model: {what}; max_seq_len {a.max_seq_len}; {a.limit} examples/task; batch {a.batch_size} rows')
    print(f'{GEN_LABEL}: {gen_src}')

    # --- LLM Foundry: one task at a time, so each is timed ------------------------------------
    import copy

    from composer import Trainer
    from llmfoundry.models.mpt import ComposerMPTCausalLM
    from llmfoundry.utils.builders import build_icl_evaluators
    cfg = {k: v for k, v in lm.model.config.to_dict().items()
           if k in __import__('inspect').signature(type(lm.model.config).__init__).parameters}
    cm = ComposerMPTCausalLM(tokenizer=lm.tokenizer, loss_fn='torch_crossentropy', **cfg)
    cm.model.load_state_dict(lm.model.state_dict())
    cm.eval()
    (tmp / 'foundry').mkdir()
    trainer = Trainer(model=cm, device='cpu', progress_bar=False, log_to_console=False, loggers=[], precision='fp32')
    theirs, t_theirs_task = {}, {}
    for task, (label, ty, shot) in zip(icl_tasks, rows):
        t0 = time.perf_counter()
        evaluators, _ = build_icl_evaluators([copy.deepcopy(task)], lm.tokenizer, a.max_seq_len, a.batch_size,
                                             destination_dir=str(tmp / 'foundry'))
        trainer.eval(eval_dataloader=evaluators)
        t_theirs_task[label] = time.perf_counter() - t0
        m = trainer.state.eval_metrics[f'{label}/{shot}-shot']
        theirs[label] = float(m[_METRIC.get(ty, 'InContextLearningMultipleChoiceAccuracy')].compute())
    t_theirs = sum(t_theirs_task.values())

    # --- ours ----------------------------------------------------------------------------------
    from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
    t0 = time.perf_counter()
    tasks, errs = parse_tasks(icl_tasks)
    res = run_gauntlet(lm, tasks, None, a.max_seq_len, max_rows=a.batch_size, bootstrap_samples=0,
                       log=lambda s: None)
    t_ours = time.perf_counter() - t0
    assert not errs and not res['errors'], errs + res['errors']
    ours = {label: res['benchmarks'][f'{label}/{shot}-shot']['accuracy'] for label, _, shot in rows}

    print(f"{'task':<16}{'type':<30}{'n':>5}{'foundry acc':>13}{'ours acc':>10}{'diff (pt)':>11}"
          f"{'foundry s':>11}{'ours s':>8}")
    max_diff = 0.0
    for label, ty, shot in rows:
        d = 100 * abs(theirs[label] - ours[label])
        max_diff = max(max_diff, d)
        b = res['benchmarks'][f'{label}/{shot}-shot']
        print(f"{label:<16}{ty:<30}{b['n']:>5}{theirs[label]:>13.4f}{ours[label]:>10.4f}{d:>11.2f}"
              f"{t_theirs_task[label]:>11.1f}{b['seconds']:>8.1f}")
    ratio = t_ours / t_theirs
    print(f'wall time: LLM Foundry {t_theirs:.1f} s (build + Trainer.eval, per task), ours {t_ours:.1f} s')
    print(f'max accuracy diff: {max_diff:.2f} points (goal <= 0.1) {"PASS" if max_diff <= 0.1 else "MISS"}')
    ok = ratio <= 0.5 and max_diff <= 0.1
    print(f'BENCH gauntlet speed_vs_foundry={ratio:.2f} goal<=0.5 {"PASS" if ok else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
