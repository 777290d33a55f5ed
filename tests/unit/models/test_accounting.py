"""FLOPs accounting (foundry_ext.models.flops) against torch's FlopCounterMode, and the peak table."""
import json
import math

import pytest
import torch

from foundry_ext.errors import UserError
from foundry_ext.models import accounting as flops
from foundry_ext.throughput import hardware

SEQ = 32


def _measure(model, vocab, seq=SEQ, batch=2):
    ids = torch.randint(0, vocab, (batch, seq))

    def step():
        out = model(input_ids=ids)
        out.logits.float().sum().backward()
    return flops.measure_flops_per_token(step, batch * seq)


def _close(analytic, measured, tol=0.02):
    assert abs(analytic - measured) / measured < tol, (analytic, measured)


@pytest.mark.parametrize('kv_heads', [None, 2, 1], ids=['dense', 'gqa', 'mqa'])
@pytest.mark.parametrize('tied', [True, False], ids=['tied', 'untied'])
def test_mpt_matches_flop_counter(kv_heads, tied):
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    attn = {'attn_impl': 'torch', 'alibi': False, 'rope': True, 'rope_impl': 'hf'}
    if kv_heads:
        attn.update(attn_type='grouped_query_attention', kv_n_heads=kv_heads)
    cfg = dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=SEQ, vocab_size=256,
               no_bias=True, attn_config=attn, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = MPTForCausalLM(MPTConfig(**cfg))
    measured = _measure(model, 256)
    _close(flops.flops_per_token({**cfg, 'name': 'mpt_causal_lm'}), measured)
    # the model's own config (MPTConfig.to_dict()) gives the same number
    assert flops.flops_per_token(model.config.to_dict()) == flops.flops_per_token(cfg)


def test_hf_llama_gqa_matches_flop_counter():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=SEQ, tie_word_embeddings=False,
                      attn_implementation='eager')
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    _close(flops.flops_per_token(cfg.to_dict()), _measure(model, 256))


def test_hf_mixtral_moe_matches_flop_counter():
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, max_position_embeddings=SEQ, num_local_experts=4,
                        num_experts_per_tok=2, attn_implementation='eager')
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg)
    b = flops.breakdown(cfg.to_dict())
    _close(b.flops_per_token, _measure(model, 256))
    assert b.ffn_active_params < b.ffn_total_params  # 2 of 4 experts active


class _RefMoE(torch.nn.Module):
    """Reference top-k MoE block (GLU experts, loop over experts) for the MPT-style MoE keys."""

    def __init__(self, d, hidden, experts, k):
        super().__init__()
        self.k = k
        self.router = torch.nn.Linear(d, experts, bias=False)
        self.w1 = torch.nn.ModuleList(torch.nn.Linear(d, hidden, bias=False) for _ in range(experts))
        self.v1 = torch.nn.ModuleList(torch.nn.Linear(d, hidden, bias=False) for _ in range(experts))
        self.w2 = torch.nn.ModuleList(torch.nn.Linear(hidden, d, bias=False) for _ in range(experts))

    def forward(self, x):
        xt = x.reshape(-1, x.shape[-1])
        w, idx = torch.topk(torch.softmax(self.router(xt), -1), self.k, -1)
        out = torch.zeros_like(xt)
        for e in range(len(self.w1)):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            h = xt[tok]
            y = self.w2[e](torch.nn.functional.silu(self.w1[e](h)) * self.v1[e](h))
            out = out.index_add(0, tok, y * w[tok, slot, None])
        return out.reshape(x.shape)


def test_mpt_moe_keys_match_reference_block():
    d, hidden, experts, k, layers, vocab = 64, 96, 4, 2, 2, 256
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):  # embedding -> [attention-free MoE block] x layers -> lm_head
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, d)
            self.blocks = torch.nn.ModuleList(_RefMoE(d, hidden, experts, k) for _ in range(layers))
            self.head = torch.nn.Linear(d, vocab, bias=False)

        def forward(self, input_ids):
            x = self.emb(input_ids)
            for blk in self.blocks:
                x = x + blk(x)
            return type('O', (), {'logits': self.head(x)})

    measured = _measure(Tiny(), vocab)
    cfg = {'d_model': d, 'n_heads': 4, 'n_layers': layers, 'vocab_size': vocab, 'max_seq_len': SEQ,
           'ffn_config': {'ffn_type': 'moe', 'ffn_hidden_size': hidden, 'moe_num_experts': experts,
                          'moe_top_k': k, 'glu': True}}
    b = flops.breakdown(cfg)
    # the reference block has no attention: compare the matmul part only
    _close(6.0 * (b.ffn_active_params + b.lm_head_params), measured)
    assert b.ffn_active_params == layers * (d * experts + k * 3 * d * hidden)
    # megablocks keys: mlp experts by default
    mb = flops.breakdown({**cfg, 'ffn_config': {'ffn_type': 'mb_moe', 'moe_num_experts': 4, 'moe_top_k': 1}})
    assert mb.ffn_active_params == layers * (d * 4 + 2 * d * 4 * d)


def test_convention_and_causal_variant():
    cfg = {'d_model': 128, 'n_heads': 4, 'n_layers': 4, 'vocab_size': 4096, 'max_seq_len': 128}
    b = flops.breakdown(cfg)
    n = 4 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 4096
    assert b.active_params == n
    assert b.flops_per_token == 6 * n + 12 * 4 * 128 * 128
    assert b.flops_per_token_causal == 6 * n + 12 * 4 * 128 * 129 / 2
    assert b.total_params == n  # tied: the embedding is the lm_head
    assert flops.breakdown({**cfg, 'tie_word_embeddings': False}).total_params == n + 128 * 4096
    # Llama-2-7B: ~6.74e9 params, 6N + 12*L*d*s at s=4096
    llama7b = {'hidden_size': 4096, 'intermediate_size': 11008, 'num_hidden_layers': 32, 'num_attention_heads': 32,
               'vocab_size': 32000, 'max_position_embeddings': 4096}
    b7 = flops.breakdown(llama7b)
    assert math.isclose(b7.total_params, 6.738e9, rel_tol=0.01)
    assert math.isclose(b7.flops_per_token, 6 * b7.active_params + 12 * 32 * 4096 * 4096)


def test_flops_bad_inputs():
    with pytest.raises(UserError, match='no FLOPs formula'):
        flops.breakdown({'model_type': 'rwkv'})
    with pytest.raises(UserError, match='model.d_model must be a positive integer'):
        flops.breakdown({'d_model': 0, 'n_layers': 2, 'n_heads': 1, 'vocab_size': 8, 'max_seq_len': 8})


def test_peak_table_and_bad_device(tmp_path, monkeypatch):
    assert hardware.peak_flops('amp_bf16', detected='NVIDIA H100 80GB HBM3')[0] == 989.5e12
    assert hardware.peak_flops('amp_bf16', device='H100 PCIe')[0] == 756e12
    assert hardware.peak_flops('amp_fp8', device='h200')[0] == 1979e12
    assert hardware.peak_flops('amp_bf16', device='a100')[0] == 312e12
    assert hardware.peak_flops('amp_bf16', device='B200')[0] == 2.25e15
    assert hardware.peak_flops('fp32', peak=1e12) == (1e12, 'user')
    with pytest.raises(UserError, match="unknown device name 'X100'"):
        hardware.peak_flops('amp_bf16', device='X100')
    with pytest.raises(UserError, match='peak_flops must be a number > 0'):
        hardware.peak_flops('fp32', peak=0)
    monkeypatch.setenv('FOUNDRY_EXT_CACHE', str(tmp_path))
    p, src = hardware.peak_flops('fp32', detected='Mystery Accelerator')  # unknown -> probe, never 0
    assert p > 1e8 and src.startswith('probe')
    assert (tmp_path / 'peak_flops.json').exists()
    assert hardware.probe_peak('cpu', 'fp32') >= p  # the best probe seen is kept
    key = hardware.probe_key('cpu', 'fp32')
    (tmp_path / 'peak_flops.json').write_text(json.dumps({key: 1.0}))  # a probe from a busy moment
    assert hardware.probe_peak('cpu', 'fp32') > 1e8  # does not stick
    (tmp_path / 'peak_flops.json').write_text(json.dumps({key: 1e18}))
    assert hardware.probe_peak('cpu', 'fp32') == 1e18  # a better earlier probe wins
