"""`foundry-ext export` time and peak memory vs a plain anchor, on the demo model and a ~125M model.

Each model is saved as a real Composer training checkpoint (Composer's save_checkpoint, with the AdamW
moments a run carries; random weights), then exported three ways, each in its own process so peak
RSS is that job's alone:

* anchor  -- what users write by hand: ``torch.load`` of the whole checkpoint, LLM Foundry's
  ``MPTForCausalLM`` from its config, ``load_state_dict``, ``save_pretrained`` (safetensors); no check;
* ours    -- ``foundry-ext export``: safe loader (memory-mapped, model tensors only), MPT -> Llama,
  safetensors, tokenizer, generation config, and the verification (reload, logits, greedy decoding);
* ours --no_verify -- the same without the verification, to show its cost.

Times are wall seconds of the whole command (imports included) and of the work after imports.
Prints a table and ends with ``BENCH export peak_mem_ratio_125m=<ours/anchor> goal<=1.0 PASS|MISS``.

    .venv/bin/python bench/export.py                 # both models (~125M takes a few minutes on 2 cores)
    .venv/bin/python bench/export.py --only demo
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_MPT = dict(no_bias=True, norm_type='rmsnorm', init_device='cpu', loss_fn='torch_crossentropy',
                 attn_config={'attn_impl': 'auto', 'attn_type': 'grouped_query_attention', 'rope': True,
                              'rope_impl': 'hf'}, ffn_config={'ffn_type': 'mptglu', 'ffn_act_fn': {'name': 'silu'}})
MODELS = {
    # the demo model: yamls/pretrain/tiny-llama-cpu.yaml
    'demo': dict(d_model=128, n_heads=4, n_layers=4, max_seq_len=128, vocab_size=4096, kv=2, ffn=384),
    # ~125M, Llama-shaped (GPT-2-small sized: d 768 x 12, 12 heads, GLU 2048, 50k vocab, tied)
    '125m': dict(d_model=768, n_heads=12, n_layers=12, max_seq_len=2048, vocab_size=50368, kv=12, ffn=2048),
}


def make_checkpoint(name: str, tok_dir: str, out: Path) -> Path:
    import copy

    import torch
    from composer.core import State
    from composer.devices import DeviceCPU
    from composer.utils.checkpoint import save_checkpoint
    from llmfoundry.utils.builders import build_composer_model
    from transformers import AutoTokenizer
    spec = MODELS[name]
    cfg = copy.deepcopy(LLAMA_MPT)
    cfg.update(d_model=spec['d_model'], n_heads=spec['n_heads'], n_layers=spec['n_layers'],
               max_seq_len=spec['max_seq_len'], vocab_size=spec['vocab_size'])
    cfg['attn_config']['kv_n_heads'] = spec['kv']
    cfg['ffn_config']['ffn_hidden_size'] = spec['ffn']
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = build_composer_model(name='foundry_mpt_causal_lm', cfg=cfg, tokenizer=tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()                      # the AdamW moments a training checkpoint carries
    state = State(model=model, rank_zero_seed=0, run_name=name, device=DeviceCPU(), optimizers=opt)
    return Path(save_checkpoint(state, str(out / 'ep0-ba1-rank0.pt')))


# ------------------------------------------------------------------------------ the measured jobs

def job_anchor(ck: str, out: str) -> None:
    import torch
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    t = time.perf_counter()
    sd = torch.load(ck, map_location='cpu', weights_only=False)      # the whole checkpoint, optimizer included
    cfg = dict(sd['state']['integrations']['huggingface']['model']['config']['content'])
    cfg = {k: v for k, v in cfg.items() if not k.startswith('_') and k not in ('model_type', 'architectures')}
    model = MPTForCausalLM(MPTConfig(**cfg))
    model.load_state_dict({k[len('model.'):]: v for k, v in sd['state']['model'].items()})
    model.save_pretrained(out, safe_serialization=True)
    _done(t)


def job_ours(ck: str, out: str, verify: bool) -> None:
    import torch  # noqa: F401  -- the libraries export imports lazily, imported first as the anchor does
    from llmfoundry.models.mpt import MPTForCausalLM  # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401

    from foundry_ext.checkpoint.export import ExportOptions, export
    t = time.perf_counter()
    export(ExportOptions(ck, out, verify=verify), log=lambda s: None)
    _done(t)


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries the parent's peak across fork + exec into
    it, so every job would report at least the bench's own peak (the model it built)."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _done(t: float) -> None:
    print(json.dumps({'work_s': time.perf_counter() - t, 'peak_rss_mb': _peak_rss_mb()}))


def measure(kind: str, ck: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, '--job', kind, str(ck), str(out)], capture_output=True, text=True,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_VERBOSITY': 'error'})
    if r.returncode != 0:
        raise SystemExit(f'{kind} failed:\n{r.stderr[-3000:]}')
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res['wall_s'] = time.perf_counter() - t
    res['out_mb'] = sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('--job', nargs=3, metavar=('KIND', 'CKPT', 'OUT'))
    ap.add_argument('--only', choices=sorted(MODELS), default=None)
    ap.add_argument('--tokenizer', default=str(ROOT / 'data' / 'tokenizer'))
    a = ap.parse_args()
    if a.job:
        kind, ck, out = a.job
        if kind == 'anchor':
            job_anchor(ck, out)
        else:
            job_ours(ck, out, verify=kind == 'ours')
        return
    if not (Path(a.tokenizer) / 'tokenizer.json').is_file():
        print(f'no tokenizer at {a.tokenizer}; run `make data` first')
        print('BENCH export peak_mem_ratio_125m=nan goal<=1.0 SKIP')
        return
    names = [a.only] if a.only else list(MODELS)
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench-export-') as d:
        for name in names:
            ck = make_checkpoint(name, a.tokenizer, Path(d) / name / 'ck')
            ck_mb = ck.stat().st_size / 2**20
            for kind in ('anchor', 'ours', 'ours_no_verify'):
                res = measure(kind, ck, Path(d) / name / kind)
                rows.append({'model': name, 'kind': kind, 'ckpt_mb': ck_mb, **res})
                print(f"  {name:5} {kind:15} wall {res['wall_s']:6.1f} s  work {res['work_s']:6.1f} s  "
                      f"peak {res['peak_rss_mb']:7.0f} MB", flush=True)
    print()
    print('| model | checkpoint MB | job | wall s (with imports) | work s | peak RSS MB | output MB |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['ckpt_mb']:.0f} | {r['kind']} | {r['wall_s']:.1f} | {r['work_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['out_mb']:.0f} |")
    by = {(r['model'], r['kind']): r for r in rows}
    target = '125m' if ('125m', 'ours') in by else names[-1]
    ratio = by[(target, 'ours')]['peak_rss_mb'] / by[(target, 'anchor')]['peak_rss_mb']
    tratio = by[(target, 'ours_no_verify')]['work_s'] / by[(target, 'anchor')]['work_s']
    print(f'\n{target}: ours/anchor peak memory {ratio:.2f}; conversion time (no verify) / anchor {tratio:.2f}; '
          f"verification adds {by[(target, 'ours')]['work_s'] - by[(target, 'ours_no_verify')]['work_s']:.1f} s")
    print(f"BENCH export peak_mem_ratio_{target}={ratio:.2f} goal<=1.0 {'PASS' if ratio <= 1.0 else 'MISS'}")


if __name__ == '__main__':
    main()
