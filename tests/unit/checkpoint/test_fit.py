"""load_path fit: the first checkpoint tensor that does not fit the model, in one line (pure check +
the shapes read from a monolithic file and from a sharded folder's index)."""
import torch

from foundry_ext.checkpoint.fit import first_mismatch, parameter_line
from foundry_ext.checkpoint.load import checkpoint_shapes

MODEL = {'model.transformer.wte.weight': (512, 64), 'model.transformer.blocks.0.attn.Wqkv.weight': (128, 64),
         'model.transformer.norm_f.weight': (64,)}


def test_first_mismatching_tensor_is_named():
    assert first_mismatch(MODEL, MODEL) is None
    ck = {**MODEL, 'model.transformer.blocks.0.attn.Wqkv.weight': (192, 64), 'model.transformer.wte.weight': (4096, 64)}
    line = first_mismatch(ck, MODEL)
    assert line.startswith('tensor model.transformer.wte.weight has shape [4096, 64] in the checkpoint but [512, 64]')
    assert '\n' not in line


def test_missing_extra_and_foreign_checkpoints():
    assert 'has no tensor model.transformer.norm_f.weight' in first_mismatch(
        {k: v for k, v in MODEL.items() if 'norm_f' not in k}, MODEL)
    assert first_mismatch({k: v for k, v in MODEL.items() if 'norm_f' not in k}, MODEL, strict=False) is None
    assert 'checkpoint tensor model.extra.weight has no place' in first_mismatch({**MODEL, 'model.extra.weight': (1,)},
                                                                                 MODEL)
    assert first_mismatch({**MODEL, 'model.extra.weight': (1,)}, MODEL, ignore=['state/model/model.extra.*']) is None
    hf = {'model.model.embed_tokens.weight': (512, 64)}
    assert 'none of its 1 tensors is in the model' in first_mismatch(hf, MODEL, strict=False)
    lora = {'model.base_model.model.q.lora_A.default.weight': (4, 64)}
    assert first_mismatch(lora, {**lora, 'model.base_model.model.q.base_layer.weight': (64, 64)}, peft=True) is None


def test_shapes_from_a_monolithic_file(tmp_path):
    f = tmp_path / 'ck.pt'
    torch.save({'state': {'model': {'model.w': torch.zeros(3, 2)}, 'optimizers': {}}}, f)
    assert checkpoint_shapes(f) == {'model.w': (3, 2)}


def test_parameter_line_counts_tied_weights_once():
    m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    m[1].weight = m[0].weight
    m[0].weight.requires_grad_(False)
    assert parameter_line(m) == 'parameters: 40 total, 0 trainable (0.00%)'
