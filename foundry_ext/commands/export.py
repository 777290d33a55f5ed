"""`foundry-ext export <checkpoint | run_dir> <hf_dir>`: print what :func:`foundry_ext.checkpoint.export.export`
wrote and how it was verified."""
from __future__ import annotations

import argparse

from foundry_ext.checkpoint.export import ExportOptions, export


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('source', help='a Composer checkpoint (.pt), a sharded checkpoint folder, or a run folder')
    p.add_argument('out', help='the Hugging Face folder to write')
    p.add_argument('--merge', action='store_true', help='LoRA: merge the adapter into the base weights')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    p.add_argument('--dtype', default='auto', help='auto (the run\'s training precision) | fp32 | bf16 | fp16')
    p.add_argument('--arch', default='auto', help='MPT checkpoints: auto (Llama when the architecture maps) | '
                   'llama | mpt')
    p.add_argument('--base', default=None, help='LoRA: the base HF folder (default: the one it was trained on)')
    p.add_argument('--tokenizer', default=None, help='tokenizer folder, when the checkpoint carries none')
    p.add_argument('--no_verify', action='store_true', help='skip the logits / greedy / tokenizer check')
    p.add_argument('--atol', type=float, default=None, help='max |logit difference| allowed (default 1e-2)')
    p.add_argument('--kl_tol', type=float, default=None, help='max mean KL per position allowed (default 1e-5)')


def run(a: argparse.Namespace) -> None:
    opts = ExportOptions(a.source, a.out, merge=a.merge, overwrite=a.overwrite, dtype=a.dtype, arch=a.arch,
                         base=a.base, tokenizer=a.tokenizer, verify=not a.no_verify)
    if a.atol is not None:
        opts.atol = a.atol
    if a.kl_tol is not None:
        opts.kl_tol = a.kl_tol
    r = export(opts)
    for n in r.notes:
        print(f'note: {n}')
    files = sorted(p.name for p in r.out.iterdir())
    print(f'wrote {r.out}: {r.architecture}, {r.dtype} ({", ".join(files)})')
    if r.verdict is not None:
        print(f'verified: {r.verdict.summary()}; tokenizer, special tokens and chat template kept')
        if r.dtype_kl is not None:
            print(f'  rounding to {r.dtype} alone: KL {r.dtype_kl:.2e} nats/position vs the fp32 weights')
    else:
        print('not verified (--no_verify)')
    print(f'load: {r.load_hint}')
    print(f'export took {r.seconds:.1f} s')
