"""Export of hf_causal_lm checkpoints: a full fine-tune keeps its class; a LoRA run exports as a PEFT adapter
folder or, with --merge, merged weights in the training dtype whose logits equal base + adapter."""
import pytest
import torch
from tinyckpt import llama_folder, logits, read_json, save_composer, tokenizer

from foundry_ext.checkpoint.export import ExportOptions, export
from foundry_ext.errors import UserError

IDS = torch.tensor([[5, 17, 99, 3, 250, 7, 7, 64, 300, 2, 11, 480]])
LORA = {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': 4, 'lora_alpha': 8, 'lora_dropout': 0.0,
        'target_modules': ['q_proj', 'v_proj', 'down_proj']}


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    return tokenizer(tiny_tokenizer)


@pytest.fixture(scope='module')
def base(tok, tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp('base') / 'llama', tok)


def _hf_model(tok, base, peft=None):
    from llmfoundry.utils.builders import build_composer_model
    cfg = {'pretrained_model_name_or_path': str(base), 'pretrained': True, 'trust_remote_code': False}
    if peft:
        cfg['peft_config'] = dict(peft)
    model = build_composer_model(name='hf_causal_lm', cfg=cfg, tokenizer=tok)
    torch.manual_seed(2)
    with torch.no_grad():      # "training": adapters (B starts at 0) or every weight moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_full_finetune_keeps_its_class(tok, base, tmp_path):
    from transformers import AutoModelForCausalLM
    model = _hf_model(tok, base)
    ck = save_composer(model, tmp_path / 'ck' / 'ep0-ba1-rank0.pt')
    r = export(ExportOptions(str(ck), str(tmp_path / 'hf')), log=lambda s: None)
    assert r.architecture == 'LlamaForCausalLM'
    out = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf'))
    assert torch.allclose(logits(out, IDS), logits(model.model.eval(), IDS), atol=1e-5)
    with pytest.raises(UserError, match='--merge is for LoRA checkpoints'):
        export(ExportOptions(str(ck), str(tmp_path / 'm'), merge=True), log=lambda s: None)


@pytest.fixture(scope='module')
def lora_ck(tok, base, tmp_path_factory):
    model = _hf_model(tok, base, LORA)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all('lora_' in n for n in trainable)
    ck = save_composer(model, tmp_path_factory.mktemp('lora') / 'ep0-ba1-rank0.pt', precision='amp_bf16')
    return ck, model.model.eval()


def test_merged_logits_equal_base_plus_adapter(lora_ck, tmp_path):
    from transformers import AutoModelForCausalLM
    ck, peft_model = lora_ck
    saved = torch.load(ck, weights_only=False)['state']['model']
    assert saved and all('lora_' in k for k in saved)                 # Composer kept only the adapter
    r = export(ExportOptions(str(ck), str(tmp_path / 'merged'), merge=True, dtype='fp32'), log=lambda s: None)
    assert r.architecture == 'merged LlamaForCausalLM'
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged'))
    assert not any('lora' in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged, IDS), logits(peft_model, IDS), atol=1e-5)


def test_merge_defaults_to_the_training_dtype(lora_ck, tmp_path):
    ck, _ = lora_ck
    r = export(ExportOptions(str(ck), str(tmp_path / 'bf16'), merge=True), log=lambda s: None)
    assert r.dtype == 'bfloat16' and read_json(tmp_path / 'bf16' / 'config.json')['torch_dtype'] == 'bfloat16'


def test_adapter_folder_loads_on_its_base(lora_ck, base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    ck, peft_model = lora_ck
    r = export(ExportOptions(str(ck), str(tmp_path / 'adapter'), dtype='fp32'), log=lambda s: None)
    assert r.architecture == 'LoRA adapter' and 'PeftModel.from_pretrained' in r.load_hint
    files = {p.name for p in (tmp_path / 'adapter').iterdir()}
    assert {'adapter_config.json', 'adapter_model.safetensors', 'tokenizer.json'} <= files
    assert 'model.safetensors' not in files
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp_path / 'adapter'))
    assert torch.allclose(logits(again, IDS), logits(peft_model, IDS), atol=1e-5)


def test_lora_base_must_be_found(lora_ck, tmp_path):
    ck, _ = lora_ck
    with pytest.raises(UserError, match='pass --base'):
        export(ExportOptions(str(ck), str(tmp_path / 'x'), merge=True, base=str(tmp_path / 'gone')),
               log=lambda s: None)
