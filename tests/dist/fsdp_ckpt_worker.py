"""Run by tests/dist/test_fsdp_export.py under `torchrun --nproc_per_node 2` (gloo, CPU).

    worker.py sharded <out dir> <tokenizer dir>
        the Llama-compatible tiny MPT wrapped in torch FSDP (per-block units, use_orig_params, the way
        Composer wraps it), one AdamW step, then Composer's own save_checkpoint with
        fsdp state_dict_type 'sharded': <out>/checkpoints/ep0-ba1/__{rank}_0.distcp + .metadata, the
        layout a GPU run writes. Rank 0 also writes <out>/reference.pt: probe logits of the full model.
    worker.py lora <out dir> <base HF folder> <tokenizer dir>
        hf_causal_lm + LoRA under torch FSDP (use_orig_params) vs the unsharded model on the ranks' half
        batches: 3 SGD steps, losses and adapter weights equal, base weights unchanged.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'unit' / 'checkpoint'))
IDS = torch.tensor([[5, 17, 99, 3, 250, 7, 7, 64, 300, 2, 11, 480]])


def fsdp(module, block_cls):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    return FSDP(module, auto_wrap_policy=ModuleWrapPolicy({block_cls}), device_id=torch.device('cpu'),
                use_orig_params=True, sharding_strategy=ShardingStrategy.FULL_SHARD)


def sharded(out: Path, tok_dir: str) -> None:
    from composer.core import State
    from composer.devices import DeviceCPU
    from composer.utils.checkpoint import save_checkpoint
    from composer.utils.parallelism import FSDPConfig, ParallelismConfig
    from llmfoundry.models.mpt.modeling_mpt import MPTBlock
    from tinyckpt import LLAMA_MPT, mpt_model, tokenizer
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    tok = tokenizer(tok_dir)
    model = mpt_model(tok, LLAMA_MPT)             # same seed on both ranks: identical weights
    model.model = fsdp(model.model, MPTBlock)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, len(tok), (2, 16), generator=torch.Generator().manual_seed(dist.get_rank()))
    batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids}
    model.loss(model(batch), batch).backward()
    opt.step()
    state = State(model=model, rank_zero_seed=0, run_name='fsdp', device=DeviceCPU(), optimizers=opt,
                  parallelism_config=ParallelismConfig(fsdp=FSDPConfig(state_dict_type='sharded')))
    assert state.fsdp_sharded_state_dict_enabled
    save_checkpoint(state, str(out / 'checkpoints' / 'ep0-ba1-rank{rank}.pt'))
    dist.barrier()
    with FSDP.summon_full_params(model.model):
        model.eval()
        with torch.no_grad():
            logits = model.model(input_ids=IDS).logits
        full = {k: v.clone() for k, v in model.model.state_dict().items()}
    if dist.get_rank() == 0:
        torch.save({'logits': logits, 'numel': sum(v.numel() for v in full.values())}, out / 'reference.pt')


def lora(out: Path, base: str, tok_dir: str) -> None:
    from llmfoundry.utils.builders import build_composer_model
    from tinyckpt import tokenizer
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = tokenizer(tok_dir)
    cfg = {'pretrained_model_name_or_path': base, 'pretrained': True, 'trust_remote_code': False,
           'peft_config': {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': 4, 'lora_alpha': 8,
                           'target_modules': ['q_proj', 'v_proj'], 'init_lora_weights': 'gaussian'}}

    def build():
        torch.manual_seed(0)
        return build_composer_model(name='hf_causal_lm', cfg=dict(cfg), tokenizer=tok)

    def batch(step, r):
        g = torch.Generator().manual_seed(100 + step)
        ids = torch.randint(0, len(tok), (4, 16), generator=g)[2 * r:2 * r + 2]
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids.clone()}

    ref = build()
    ref_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    ref_losses = []
    for step in range(3):
        ref_opt.zero_grad()
        for r in range(world):
            loss = ref.loss(ref(batch(step, r)), batch(step, r))
            (loss / world).backward()
            if r == rank:
                ref_losses.append(float(loss))
        ref_opt.step()

    model = build()
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    model.model = fsdp(model.model, LlamaDecoderLayer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = model.loss(model(batch(step, rank)), batch(step, rank))
        loss.backward()
        losses.append(float(loss))
        opt.step()
    with FSDP.summon_full_params(model.model):
        got = dict(model.model.named_parameters())
        want = dict(ref.model.named_parameters())
        clean = lambda n: n.replace('_fsdp_wrapped_module.', '')  # noqa: E731
        got = {clean(n): p for n, p in got.items()}
        lora_diff = max(float((got[n] - p).abs().max()) for n, p in want.items() if 'lora_' in n)
        lora_moved = max(float((got[n] - before[n]).abs().max()) for n in want if 'lora_' in n)
        base_moved = max(float((got[n] - before[n]).abs().max()) for n in want if 'lora_' not in n)
    (out / f'lora.rank{rank}.json').write_text(json.dumps({
        'losses': losses, 'ref_losses': ref_losses, 'lora_diff': lora_diff, 'lora_moved': lora_moved,
        'base_moved': base_moved, 'n_trainable': sum(p.numel() for p in trainable)}))


def main() -> None:
    dist.init_process_group('gloo')
    out = Path(sys.argv[2])
    if sys.argv[1] == 'sharded':
        sharded(out, sys.argv[3])
    else:
        lora(out, sys.argv[3], sys.argv[4])
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
