"""Run by tests/test_gauntlet.py under `torchrun --nproc_per_node 2` (gloo, CPU).

    worker.py <tokenizer dir> <tasks.json> <out dir>

Scores the same tasks three ways and writes ``<out>/<what>-rank<r>.json`` (per-example correctness):
  single   rank 0 alone, no sharding (the reference)
  sharded  both ranks, each with the whole model, examples split between them
  fsdp     both ranks, one FSDP-sharded MPT (per-block wrapping), examples split, lockstep calls
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from foundry_ext.gauntlet.config import RunOptions
from foundry_ext.gauntlet.models import wrap
from foundry_ext.gauntlet.runner import parse_tasks, run_gauntlet
from foundry_ext.gauntlet.shard import Shard

NO_BOOT = RunOptions(bootstrap_samples=0)


def mpt(tok):
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    torch.manual_seed(1)
    cfg = MPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=128, vocab_size=len(tok), init_device='cpu',
                    attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'alibi': False})
    return MPTForCausalLM(cfg)


def main() -> None:
    tok_dir, tasks_json, out = sys.argv[1:4]
    out = Path(out)
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tasks, errs = parse_tasks(json.loads(Path(tasks_json).read_text()))
    assert not errs, errs

    def save(what, res):
        keep = {k: b.correct for k, b in res.benchmarks.items()}
        (out / f'{what}-rank{rank}.json').write_text(json.dumps({'correct': keep, 'world': res.world_size,
                                                                  'errors': res.errors}))

    model = mpt(tok).eval()
    reference = mpt(tok).eval()  # same seed: same weights
    if rank == 0:
        save('single', run_gauntlet(wrap(reference, tok, 'ref', 128, 'ref', 'cpu'), tasks, None, NO_BOOT,
                                    log=lambda s: None, shard=Shard()))
    dist.barrier()
    save('sharded', run_gauntlet(wrap(model, tok, 'whole', 128, 'whole', 'cpu'), tasks, None, NO_BOOT,
                                 log=lambda s: None))

    from llmfoundry.models.mpt.modeling_mpt import MPTBlock
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    sharded = FSDP(mpt(tok), auto_wrap_policy=ModuleWrapPolicy({MPTBlock}), device_id=torch.device('cpu'),
                   use_orig_params=True)
    mine = sum(p.numel() for p in sharded.parameters() if p.numel())
    full = sum(p.numel() for p in reference.parameters())
    assert mine < full, (mine, full)  # really sharded: this rank holds only part of the weights
    save('fsdp', run_gauntlet(wrap(sharded, tok, 'fsdp', 128, 'fsdp', 'cpu'), tasks, None, NO_BOOT,
                              log=lambda s: None, shard=Shard.detect(lockstep=True)))
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
