"""Run by tests/test_models_mpt.py under `torchrun --nproc_per_node 2` (gloo, CPU): the MoE model
(`foundry_mpt_causal_lm` + `torch_dmoe`) trained under torch FSDP, checked against the same model
trained without FSDP in the same process.

    worker.py <out dir> <strategy>:<checkpointing 0|1> ...     e.g. FULL_SHARD:1 SHARD_GRAD_OP:0

writes ``<out dir>/<strategy>-<checkpointing>.rank<r>.json`` per setting.

Wrapping mirrors Composer's: the HF model inside the ComposerModel becomes the FSDP root, each MPT
block its own FSDP unit (use_orig_params), optionally non-reentrant activation checkpointing per block
(what the MoE yamls set). The reference sees each rank's half batch separately and averages the
gradients, which is what data-parallel FSDP computes (the MoE aux loss is per rank, as in MegaBlocks).
"""
import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

CFG = dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=16, vocab_size=64, no_bias=True,
           loss_fn='torch_crossentropy', init_device='cpu',
           attn_config={'attn_impl': 'auto', 'attn_type': 'grouped_query_attention', 'kv_n_heads': 2, 'rope': True},
           ffn_config={'ffn_type': 'torch_dmoe', 'moe_num_experts': 4, 'moe_top_k': 2, 'ffn_hidden_size': 48,
                       'moe_loss_weight': 0.05, 'moe_z_loss_weight': 0.01})
STEPS, LR = 3, 0.5


def build():
    from llmfoundry.utils.builders import build_composer_model
    torch.manual_seed(0)
    return build_composer_model(name='foundry_mpt_causal_lm', cfg=copy.deepcopy(CFG), tokenizer=None)


def batch(step, rank):
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, 64, (4, 16), generator=g)[2 * rank:2 * rank + 2]
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids, dtype=torch.bool), 'labels': ids.clone()}


def main() -> None:
    dist.init_process_group('gloo')
    for setting in sys.argv[2:]:
        strategy, ckpt = setting.split(':')
        run(Path(sys.argv[1]) / f'{strategy}-{ckpt}', strategy, ckpt == '1')
    dist.destroy_process_group()


def run(out: Path, strategy: str, ckpt: bool) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    from llmfoundry.models.mpt.modeling_mpt import MPTBlock
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    # Reference: plain model, gradients averaged over the ranks' half batches.
    ref = build()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=LR)
    ref_losses = []
    for step in range(STEPS):
        ref_opt.zero_grad()
        losses = []
        for r in range(world):
            b = batch(step, r)
            out_r = ref.loss(ref(b), b)
            (out_r['total'] / world).backward()
            losses.append(float(out_r['total']))
        ref_losses.append(losses[rank])
        ref_opt.step()

    model = build()
    model.model = FSDP(model.model, auto_wrap_policy=ModuleWrapPolicy({MPTBlock}), device_id=torch.device('cpu'),
                       use_orig_params=True, sharding_strategy=getattr(ShardingStrategy, strategy))
    if ckpt:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            CheckpointImpl,
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )
        apply_activation_checkpointing(
            model.model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, CheckpointImpl.NO_REENTRANT),
            check_fn=lambda m: isinstance(m, MPTBlock))
    moe = model.moe_layers[0]
    local = sum(p.numel() for p in (moe.w1, moe.v1, moe.w2))
    full = 3 * 4 * 32 * 48
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses, aux, tokens = [], [], []
    for step in range(STEPS):
        opt.zero_grad()
        b = batch(step, rank)
        o = model.loss(model(b), b)
        o['total'].backward()
        losses.append(float(o['total']))
        aux.append(float(o['moe_aux']))
        tokens.append(int(moe.stats.tokens_per_expert.sum()))
        opt.step()
    with FSDP.summon_full_params(model.model):
        diff = max(float((p - q).abs().max()) for p, q in zip(model.model.parameters(), ref.model.parameters()))
        moved = max(float((p - q).abs().max()) for p, q in zip(model.model.parameters(), build().model.parameters()))
    out.with_suffix(f'.rank{rank}.json').write_text(json.dumps({
        'losses': losses, 'ref_losses': ref_losses, 'aux': aux, 'tokens': tokens, 'max_param_diff': diff,
        'max_param_update': moved, 'local_expert_numel': local, 'full_expert_numel': full,
        'checkpointed': sum('checkpoint' in type(m).__name__.lower() for m in model.modules())}))


if __name__ == '__main__':
    main()
