"""FSDP on 2 gloo CPU processes (Composer's FSDP needs CUDA; the sharding is torch's either way):
export of a sharded checkpoint written by Composer's own save_checkpoint, and LoRA training under FSDP."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

WORKER = str(ROOT / 'tests' / 'dist' / 'fsdp_ckpt_worker.py')


def _run(*args):
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        WORKER, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_sharded_checkpoint_exports_like_the_full_model(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from foundry_ext.checkpoint.export import ExportOptions, export
    from foundry_ext.checkpoint.load import checkpoint_shapes, resolve_checkpoint
    _run('sharded', tmp_path, tiny_tokenizer)
    (folder,) = (tmp_path / 'checkpoints').glob('ep0-ba*')         # Composer's sharded_ckpt_prefix_dir
    assert {p.name for p in folder.iterdir()} >= {'.metadata', '__0_0.distcp', '__1_0.distcp'}
    assert resolve_checkpoint(tmp_path) == folder.resolve()
    assert checkpoint_shapes(folder)['model.transformer.wte.weight'] == (512, 32)    # from the index alone
    ref = torch.load(tmp_path / 'reference.pt')
    r = export(ExportOptions(str(tmp_path), str(tmp_path / 'hf')), log=lambda s: None)
    assert r.architecture == 'LlamaForCausalLM' and r.verdict.ok
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf'))
    with torch.no_grad():
        got = model(input_ids=torch.tensor([[5, 17, 99, 3, 250, 7, 7, 64, 300, 2, 11, 480]])).logits
    assert torch.allclose(got, ref['logits'], atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == ref['numel']


@pytest.mark.slow
def test_lora_trains_under_fsdp_like_without(tiny_tokenizer, tmp_path):
    import sys as _s
    _s.path.insert(0, str(ROOT / 'tests' / 'unit' / 'checkpoint'))
    from tinyckpt import llama_folder, tokenizer
    base = llama_folder(tmp_path / 'base', tokenizer(tiny_tokenizer))
    _run('lora', tmp_path, base, tiny_tokenizer)
    runs = [json.loads((tmp_path / f'lora.rank{k}.json').read_text()) for k in (0, 1)]
    for res in runs:
        assert res['losses'] == pytest.approx(res['ref_losses'], abs=1e-5)
        assert res['lora_diff'] < 1e-5 < res['lora_moved'] and res['base_moved'] == 0.0
    assert runs[0]['losses'] != runs[1]['losses']
