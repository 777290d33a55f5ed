"""Our gauntlet scorer vs LLM Foundry's own ICL evaluator, same model, same real tasks, one run.

    python bench/gauntlet_vs_foundry.py [--checkpoint runs/demo/checkpoints/latest-rank0.pt]
                                        [--eval-data ../shared/eval_data] [--limit 200]

Tasks (LLM Foundry Gauntlet v0.3 settings): copa, piqa, arc_easy, winograd, lambada_openai, the
first ``--limit`` examples of each (written to a temp folder that both sides read). LLM Foundry:
``build_icl_evaluators`` + Composer ``Trainer.eval`` on ``ComposerMPTCausalLM`` with the same
weights. Ours: :func:`foundry_ext.gauntlet.runner.run_gauntlet` (no cache, no bootstrap).
Timed for both: dataset building + tokenization + scoring (not the model load, not Trainer init).
Accuracies must agree within 0.1 point; speed goal: ours <= 0.5x their wall time.
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
    print(f'model: {what}; max_seq_len {a.max_seq_len}; {a.limit} examples/task; batch {a.batch_size} rows')

    # --- LLM Foundry ---------------------------------------------------------------------------
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
    t0 = time.perf_counter()
    evaluators, _ = build_icl_evaluators(copy.deepcopy(icl_tasks), lm.tokenizer, a.max_seq_len, a.batch_size,
                                         destination_dir=str(tmp / 'foundry'))
    t_build = time.perf_counter() - t0
    trainer = Trainer(model=cm, eval_dataloader=evaluators, device='cpu', progress_bar=False, log_to_console=False,
                      loggers=[], precision='fp32')
    t0 = time.perf_counter()
    trainer.eval()
    t_theirs = t_build + time.perf_counter() - t0
    theirs = {}
    for label, _, ty, shot, _ in TASKS:
        m = trainer.state.eval_metrics[f'{label}/{shot}-shot']
        name = 'InContextLearningLMAccuracy' if ty == 'language_modeling' else 'InContextLearningMultipleChoiceAccuracy'
        theirs[label] = float(m[name].compute())

    # --- ours ----------------------------------------------------------------------------------
    from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
    t0 = time.perf_counter()
    tasks, errs = parse_tasks(icl_tasks)
    res = run_gauntlet(lm, tasks, None, a.max_seq_len, max_rows=a.batch_size, bootstrap_samples=0,
                       log=lambda s: None)
    t_ours = time.perf_counter() - t0
    assert not errs and not res['errors'], errs + res['errors']
    ours = {label: res['benchmarks'][f'{label}/{shot}-shot']['accuracy'] for label, _, _, shot, _ in TASKS}

    print(f"{'task':<16}{'type':<19}{'n':>5}{'foundry acc':>13}{'ours acc':>10}{'diff (pt)':>11}")
    max_diff = 0.0
    for label, _, ty, shot, _ in TASKS:
        d = 100 * abs(theirs[label] - ours[label])
        max_diff = max(max_diff, d)
        n = res['benchmarks'][f'{label}/{shot}-shot']['n']
        print(f'{label:<16}{ty:<19}{n:>5}{theirs[label]:>13.4f}{ours[label]:>10.4f}{d:>11.2f}')
    ratio = t_ours / t_theirs
    print(f'wall time: LLM Foundry {t_theirs:.1f} s (build {t_build:.1f} s + Trainer.eval), ours {t_ours:.1f} s')
    print(f'max accuracy diff: {max_diff:.2f} points (goal <= 0.1) {"PASS" if max_diff <= 0.1 else "MISS"}')
    ok = ratio <= 0.5 and max_diff <= 0.1
    print(f'BENCH gauntlet speed_vs_foundry={ratio:.2f} goal<=0.5 {"PASS" if ok else "MISS"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
