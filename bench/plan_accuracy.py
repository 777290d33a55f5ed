"""Planner accuracy: predicted vs measured peak memory of real training steps of our models.

    python bench/plan_accuracy.py                 # CPU: every case below, live-tensor peaks
    python bench/plan_accuracy.py --case dense    # cases whose name contains 'dense'
    python bench/plan_accuracy.py --device cuda   # GPU: a ~1B model, torch.cuda.max_memory_allocated

Anchor: the measured peak of 3 optimizer steps run by Composer's Trainer (the real loop: microbatches,
``state.outputs`` kept, train metrics, decoupled AdamW), on the model LLM Foundry builds from the
same config (``foundry_mpt_causal_lm``; LoRA: ``hf_causal_lm`` + PEFT on a Llama config). On CPU the
peak is the high-water mark of live tensor storage bytes, tracked by a TorchDispatchMode on every op
(each storage counted once, freed when its last reference dies): the CPU analogue of
``torch.cuda.max_memory_allocated``. Activation checkpointing is applied with the wrapper Composer
uses under FSDP (torch's ``checkpoint_wrapper`` on every block). Ours: ``foundry_ext.plan`` on the
same config. Goal: within 10% for every case (dense, MoE, LoRA; with and without checkpointing).
The first cases are the calibration data (the per-term constants were read off them); the
``heldout-`` cases use shapes none was fitted on. docs/plan.md lists what they measured.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('HF_HUB_OFFLINE', '1')

GOAL = 0.10
TINY = dict(d_model=256, n_heads=4, n_layers=4, expansion_ratio=4, vocab_size=4096, no_bias=True,
            loss_fn='torch_crossentropy', init_device='cpu',
            attn_config={'attn_impl': 'sdpa', 'rope': True, 'rope_impl': 'hf'})
MOE = {'ffn_type': 'torch_dmoe', 'moe_num_experts': 4, 'moe_top_k': 2, 'moe_glu': True, 'ffn_hidden_size': 512}
LLAMA = dict(model_type='llama', hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=4096, max_position_embeddings=256, tie_word_embeddings=False)
LORA = {'peft_type': 'LORA', 'r': 16, 'lora_alpha': 32, 'lora_dropout': 0.0, 'target_modules': 'all-linear',
        'task_type': 'CAUSAL_LM'}
# name, model overrides, hf config (LoRA cases), activation checkpointing, microbatch, batch, seq, precision
CASES: list[dict] = [
    dict(name='dense', model={}, ac=False, mb=4, batch=8, seq=256),
    dict(name='dense-ac', model={}, ac=True, mb=4, batch=8, seq=256),
    dict(name='dense-ac-v512', model={'vocab_size': 512}, ac=True, mb=4, batch=8, seq=256),
    dict(name='dense-mb1-gqa', model={'n_heads': 8, 'attn_config': {**TINY['attn_config'], 'kv_n_heads': 2,
                                                                     'attn_type': 'grouped_query_attention'}},
         ac=False, mb=1, batch=2, seq=256),
    dict(name='dense-math-attn', model={'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'}},
         ac=False, mb=4, batch=4, seq=512),
    dict(name='dense-alibi-ac', model={'attn_config': {'attn_impl': 'sdpa', 'alibi': True}}, ac=True, mb=4, batch=4,
         seq=256),
    dict(name='dense-amp', model={}, ac=False, mb=4, batch=8, seq=256, precision='amp_bf16'),
    dict(name='moe', model={'ffn_config': MOE}, ac=False, mb=4, batch=8, seq=256),
    dict(name='moe-ac', model={'ffn_config': MOE}, ac=True, mb=4, batch=8, seq=256),
    dict(name='lora', hf=LLAMA, peft=LORA, ac=False, mb=4, batch=8, seq=256),
    dict(name='lora-ac', hf=LLAMA, peft=LORA, ac=True, mb=4, batch=8, seq=256),
    dict(name='lora-qv-amp', hf=LLAMA, peft={**LORA, 'target_modules': ['q_proj', 'v_proj']}, ac=False, mb=4,
         batch=4, seq=256, precision='amp_bf16'),
    # held out: shapes no constant was fitted on (other width, depth, heads, seq, vocab, microbatch, experts)
    dict(name='heldout-dense-amp-ac', model={'d_model': 192, 'n_heads': 6, 'n_layers': 6, 'vocab_size': 3000},
         ac=True, mb=3, batch=6, seq=384, precision='amp_bf16'),
    dict(name='heldout-moe-8x-top1', model={'d_model': 192, 'n_heads': 3, 'n_layers': 3, 'ffn_config': {
        **MOE, 'moe_num_experts': 8, 'moe_top_k': 1, 'ffn_hidden_size': 384}}, ac=False, mb=2, batch=4, seq=320),
    dict(name='heldout-lora-r8-ac', hf={**LLAMA, 'hidden_size': 320, 'intermediate_size': 864, 'num_hidden_layers': 3,
                                        'num_attention_heads': 5, 'num_key_value_heads': 5, 'vocab_size': 5000},
         peft={**LORA, 'r': 8, 'lora_alpha': 16}, ac=True, mb=2, batch=4, seq=320),
]
GPU_CASES: list[dict] = [   # ~1.3B dense (yamls/pretrain/1b.yaml's model) on one GPU, bf16 autocast, SDPA
    dict(name='gpu-1b', model=dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50368), ac=False, mb=4,
         batch=8, seq=2048, precision='amp_bf16'),
    dict(name='gpu-1b-ac', model=dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50368), ac=True, mb=8,
         batch=16, seq=2048, precision='amp_bf16'),
]


def train_config(case: dict, hf_dir: str | None) -> dict:
    """The training config the planner reads (the same one the model below is built from)."""
    if 'hf' in case:
        model = {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': hf_dir, 'pretrained': False,
                 'attn_implementation': 'sdpa', 'peft_config': case['peft']}
    else:
        model = {'name': 'foundry_mpt_causal_lm', **TINY, **case['model'], 'max_seq_len': case['seq']}
    return {'model': model, 'max_seq_len': case['seq'], 'global_train_batch_size': case['batch'],
            'device_train_microbatch_size': case['mb'], 'precision': case.get('precision', 'fp32'),
            'optimizer': {'name': 'decoupled_adamw', 'lr': 1e-4, 'betas': [0.9, 0.95], 'weight_decay': 0.0},
            'fsdp_config': {'activation_checkpointing': case['ac'], 'activation_checkpointing_reentrant': False},
            'max_duration': '3ba'}


def predict(cfg: dict, case: dict, device_bytes: float) -> object:
    from foundry_ext.plan.inputs import read_setup
    from foundry_ext.plan.memory import Cluster, estimate
    setup = read_setup(cfg)
    return estimate(setup, Cluster('measured', device_bytes, 1), checkpointing=case['ac'])


def _phase_callback(tracker):
    from composer.core import Callback

    class Phases(Callback):
        def before_forward(self, state, logger):
            tracker.phase = 'forward/backward'

        def after_backward(self, state, logger):
            tracker.phase = 'train metrics'

        def after_train_batch(self, state, logger):
            tracker.phase = 'optimizer step'

        def batch_end(self, state, logger):
            tracker.phase = 'between'
    return Phases()


def build_model(cfg: dict, case: dict, tmp: str):
    import torch
    from llmfoundry.utils.builders import build_composer_model
    torch.manual_seed(0)
    tok = None
    if 'hf' in case:
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast
        vocab = {f't{i}': i for i in range(case['hf']['vocab_size'])}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token='t0')),
                                      pad_token='t0', eos_token='t1')
    model = build_composer_model(name=cfg['model']['name'], cfg={k: v for k, v in cfg['model'].items() if k != 'name'},
                                 tokenizer=tok)
    if case['ac']:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )
        inner = model.model
        if 'hf' in case:
            from transformers.models.llama.modeling_llama import LlamaDecoderLayer
            check = lambda m: isinstance(m, LlamaDecoderLayer)  # noqa: E731
        else:
            check = inner.activation_checkpointing_fn
        apply_activation_checkpointing(inner, checkpoint_wrapper_fn=functools.partial(
            checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT), check_fn=check)
    return model


@contextlib.contextmanager
def _cpu_autocast(enabled: bool):
    """Composer autocasts only on CUDA: give its precision context CPU autocast (bf16) for amp cases, so
    forward and loss run under autocast exactly where they would on a GPU."""
    import torch
    from composer.trainer import trainer as trainer_mod
    orig = trainer_mod.get_precision_context

    def ctx(precision, precision_config=None, fp8_autocast_enabled=True):
        return torch.autocast('cpu', dtype=torch.bfloat16)
    if enabled:
        trainer_mod.get_precision_context = ctx
    try:
        yield
    finally:
        trainer_mod.get_precision_context = orig


def measure(cfg: dict, case: dict, device: str, tmp: str) -> tuple[float, dict[str, int]]:
    import torch
    from composer import Trainer
    from composer.optim import DecoupledAdamW
    model = build_model(cfg, case, tmp)
    vocab = (case.get('hf') or {}).get('vocab_size') or cfg['model']['vocab_size']
    g = torch.Generator().manual_seed(1)
    samples = [torch.randint(0, vocab, (case['seq'],), generator=g) for _ in range(case['batch'] * 3)]

    def collate(xs):
        ids = torch.stack(xs)
        return {'input_ids': ids, 'labels': ids.clone(), 'attention_mask': torch.ones_like(ids)}
    dl = torch.utils.data.DataLoader(samples, batch_size=case['batch'], collate_fn=collate)
    opt = DecoupledAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                         weight_decay=0.0)
    cuda = device == 'cuda'
    from foundry_ext.plan.measure import LiveBytes
    tracker = None if cuda else LiveBytes()
    trainer = Trainer(model=model, train_dataloader=dl, optimizers=opt, max_duration='3ba',
                      device='gpu' if cuda else 'cpu', precision=case.get('precision', 'fp32') if cuda else 'fp32',
                      device_train_microbatch_size=case['mb'], progress_bar=False, log_to_console=False,
                      loggers=[], callbacks=[] if cuda else [_phase_callback(tracker)], seed=17)
    amp = case.get('precision', 'fp32') != 'fp32' and not cuda
    if cuda:   # also what the CPU cannot measure: fragmentation (reserved / allocated) and memory outside torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved()
        return float(torch.cuda.max_memory_allocated()), {
            'max_reserved': torch.cuda.max_memory_reserved(), 'outside_torch': total - free - reserved}
    for p in model.parameters():
        tracker.track(p)
    for b in model.buffers():
        tracker.track(b)
    with _cpu_autocast(amp), tracker.mode:
        trainer.fit()
    phases = dict(tracker.phase_peak)
    phases.pop('init', None)
    phases.pop('between', None)
    return float(tracker.peak), phases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    ap.add_argument('--case', default='', help='run the cases whose name contains this')
    ap.add_argument('--json', default=None, help='also write the rows here')
    a = ap.parse_args()
    import torch

    from foundry_ext.plan.memory import FRAGMENTATION
    if a.device == 'cuda' and not torch.cuda.is_available():
        print('BENCH plan_accuracy max_abs_err=n/a goal<=0.10 SKIP (no CUDA device)')
        return 0
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    cases = [c for c in (GPU_CASES if a.device == 'cuda' else CASES) if a.case in c['name']]
    rows = []
    t0 = time.time()
    device_bytes = torch.cuda.get_device_properties(0).total_memory if a.device == 'cuda' else 1e15
    print(f"{'case':<16} {'predicted MiB':>13} {'measured MiB':>12} {'error':>7}   phases predicted / measured (MiB)")
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            if 'hf' in case:
                Path(tmp, 'config.json').write_text(json.dumps({**case['hf'], 'architectures': ['LlamaForCausalLM']}))
            cfg = train_config(case, tmp)
            plan = predict(cfg, case, device_bytes)
            measured, phases = measure(cfg, case, a.device, tmp)
        err = (plan.allocated - measured) / measured
        mib = 2 ** 20
        if a.device == 'cuda':
            ph = (f"reserved {phases['max_reserved'] / mib:.0f} (x{phases['max_reserved'] / measured:.3f} of allocated;"
                  f" predicted x{1 + FRAGMENTATION:.2f}), outside torch {phases['outside_torch'] / mib:.0f} (predicted "
                  f"{plan.outside / mib:.0f})")
        else:
            ph = '  '.join(f'{k.split()[0]} {plan.phases.get(k, 0) / mib:.0f}/{v / mib:.0f}' for k, v in phases.items())
        print(f"{case['name']:<16} {plan.allocated / mib:13.1f} {measured / mib:12.1f} {100 * err:+6.1f}%   {ph}",
              flush=True)
        rows.append({'case': case['name'], 'predicted': plan.allocated, 'measured': measured, 'error': err,
                     'peak_phase': plan.peak_phase, 'phases_measured': phases, 'phases_predicted': plan.phases})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    worst = max(abs(r['error']) for r in rows) if rows else float('nan')
    status = 'PASS' if rows and worst <= GOAL else 'MISS'
    print(f'({len(rows)} cases, {time.time() - t0:.0f} s)')
    print(f'BENCH plan_accuracy max_abs_err={worst:.3f} goal<={GOAL:.2f} {status}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
