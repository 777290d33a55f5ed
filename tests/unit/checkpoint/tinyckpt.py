"""Tiny Composer checkpoints for the checkpoint / export tests, written by Composer's own save_checkpoint
(the exact layout training writes), and tiny HF model folders. Imported by the tests beside it and by
tests/dist workers (sys.path)."""
import copy
import json
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

# Llama-compatible MPT (rmsnorm, no bias, rope hf, silu GLU, GQA 4/2) and a plain one (layernorm, gelu MLP)
LLAMA_MPT = dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, no_bias=True, norm_type='rmsnorm',
                 init_device='cpu', loss_fn='torch_crossentropy',
                 attn_config={'attn_impl': 'auto', 'attn_type': 'grouped_query_attention', 'kv_n_heads': 2,
                              'rope': True, 'rope_impl': 'hf'},
                 ffn_config={'ffn_type': 'mptglu', 'ffn_act_fn': {'name': 'silu'}, 'ffn_hidden_size': 64})
PLAIN_MPT = dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, expansion_ratio=2, init_device='cpu',
                 loss_fn='torch_crossentropy', attn_config={'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'})


def tokenizer(tok_dir, chat_template=True):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir), model_max_length=64)
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def mpt_model(tok, cfg=LLAMA_MPT, name='foundry_mpt_causal_lm', seed=0):
    import torch
    from llmfoundry.utils.builders import build_composer_model
    torch.manual_seed(seed)
    cfg = copy.deepcopy(cfg)
    cfg['vocab_size'] = len(tok)
    model = build_composer_model(name=name, cfg=cfg, tokenizer=tok)
    with torch.no_grad():   # MPT inits norms to 1 and some weights to 0; make every tensor matter
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def save_composer(model, path, precision='fp32'):
    """Composer's own monolithic checkpoint of ``model`` (+ an AdamW state, as a run writes)."""
    import torch
    from composer.core import Precision, State
    from composer.devices import DeviceCPU
    from composer.utils.checkpoint import save_checkpoint
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = State(model=model, rank_zero_seed=0, run_name='tiny', device=DeviceCPU(), optimizers=opt,
                  precision=Precision(precision))
    return Path(save_checkpoint(state, str(path)))


def llama_folder(out, tok, pretrained=True, **over):
    """A tiny HF Llama folder (random weights) whose vocab matches ``tok``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **over)
    torch.manual_seed(1)
    out = Path(out)
    if pretrained:
        LlamaForCausalLM(cfg).save_pretrained(str(out))
    else:
        cfg.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def logits(model, ids):
    import torch
    with torch.no_grad():
        out = model(input_ids=ids)
    return (out.logits if hasattr(out, 'logits') else out[0]).float()


def read_json(path):
    return json.loads(Path(path).read_text())
