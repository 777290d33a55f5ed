"""LLM Foundry adapter: our model/attention/ffn resolve by name, match MPT, and MoE losses reach the loss."""
import copy

import pytest
import torch

BASE = dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=16, vocab_size=64,
            no_bias=True, loss_fn='torch_crossentropy', init_device='cpu')


def _build(name, **over):
    from llmfoundry.utils.builders import build_composer_model
    cfg = copy.deepcopy(BASE)
    for k, v in over.items():
        cfg[k] = v
    torch.manual_seed(0)
    return build_composer_model(name=name, cfg=cfg, tokenizer=None)


def _batch(seq_id=False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 16), generator=g)
    b = {'input_ids': ids, 'attention_mask': torch.ones_like(ids, dtype=torch.bool), 'labels': ids.clone()}
    if seq_id:
        b['sequence_id'] = torch.tensor([[0] * 6 + [1] * 10, [0] * 11 + [1] * 5])
    return b


def test_registry_resolves_our_components():
    from llmfoundry import registry
    from llmfoundry.layers_registry import attention_classes, ffns, module_init_fns

    from foundry_ext.models import mpt
    from foundry_ext.models.moe_monitor import MoEMonitor
    assert registry.models.get('foundry_mpt_causal_lm') is mpt.FoundryMPTCausalLM
    assert attention_classes.get('foundry_attention') is mpt.FoundryAttention
    assert ffns.get('torch_dmoe') is mpt.build_torch_dmoe
    assert module_init_fns.get('torch_dmoe') is mpt.torch_dmoe_init
    assert registry.callbacks.get('moe_monitor') is MoEMonitor


@pytest.mark.parametrize('attn', [
    dict(rope=True, rope_impl='hf'),
    dict(rope=True, rope_impl='hf', attn_uses_sequence_id=True, kv_n_heads=2, attn_type='grouped_query_attention'),
    dict(alibi=True, attn_uses_sequence_id=True),
    dict(rope=True, rope_impl='hf', sliding_window_size=4),
])
def test_matches_llmfoundry_torch_attention(attn):
    impl = 'sdpa' if attn.get('rope') else 'auto'
    seq = attn.get('attn_uses_sequence_id', False)
    ref = _build('mpt_causal_lm', attn_config={**attn, 'attn_impl': 'torch'})
    ours = _build('foundry_mpt_causal_lm', attn_config={**attn, 'attn_impl': impl})
    ours.load_state_dict(ref.state_dict())
    assert type(ours.model.transformer.blocks[0].attn).__name__ == 'FoundryAttention'
    b = _batch(seq)
    lr, lo = ref.loss(ref(b), b), ours.loss(ours(b), b)
    torch.testing.assert_close(lo, lr, atol=1e-5, rtol=1e-5)
    lr.backward()
    lo.backward()
    gr = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, gr[n].grad, atol=1e-5, rtol=1e-4)


def test_bad_attn_impl_is_one_line():
    from foundry_ext.errors import UserError
    with pytest.raises(UserError, match="attn_impl 'fast' is not one of auto, flash, sdpa, torch"):
        _build('foundry_mpt_causal_lm', attn_config={'attn_impl': 'fast'})
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match='attn_impl flash needs .*auto would use sdpa'):
            _build('foundry_mpt_causal_lm', attn_config={'attn_impl': 'flash'})


def test_moe_model_adds_aux_loss_and_trains_router():
    m = _build('foundry_mpt_causal_lm', attn_config={'attn_impl': 'auto', 'rope': True},
               ffn_config={'ffn_type': 'torch_dmoe', 'moe_num_experts': 4, 'moe_top_k': 2, 'ffn_hidden_size': 48,
                           'moe_loss_weight': 0.05})
    assert len(m.moe_layers) == 2
    b = _batch()
    out = m.loss(m(b), b)
    assert set(out) == {'total', 'loss', 'moe_aux'}
    torch.testing.assert_close(out['total'], out['loss'] + out['moe_aux'])
    assert out['moe_aux'] > 0
    out['total'].backward()
    assert m.moe_layers[0].router.weight.grad.abs().sum() > 0
    from foundry_ext.models.moe_monitor import moe_metrics
    mets = moe_metrics(m.moe_layers, per_expert=True)
    assert mets['moe/layer0/dropped_frac'] == 0 and mets['moe/layer1/max_load'] >= 1.0
    assert abs(sum(mets[f'moe/layer0/expert{e}'] for e in range(4)) - 1) < 1e-6


def test_moe_init_follows_mpt_init_config():
    m = _build('foundry_mpt_causal_lm', attn_config={'attn_impl': 'torch'},
               init_config={'name': 'baseline_', 'init_std': 0.5},
               ffn_config={'ffn_type': 'torch_dmoe', 'moe_num_experts': 2, 'moe_top_k': 1})
    moe = m.moe_layers[0]
    assert abs(float(moe.w1.std()) - 0.5) < 0.05
    assert float(moe.w2.std()) < 0.5 / 1.5  # residual output divided by sqrt(2 * n_layers)


def test_unknown_moe_key_is_rejected():
    from foundry_ext.errors import UserError
    with pytest.raises(UserError, match=r"unknown key model.ffn_config.moe_topk; did you mean 'moe_top_k'"):
        _build('foundry_mpt_causal_lm', attn_config={'attn_impl': 'torch'},
               ffn_config={'ffn_type': 'torch_dmoe', 'moe_topk': 1})


def test_hf_llama_from_local_config_dir(tmp_path):
    """hf_causal_lm builds a Llama-family model from a local config folder (no hub, random init)."""
    from llmfoundry.utils.builders import build_composer_model
    from transformers import LlamaConfig
    LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32).save_pretrained(tmp_path / 'llama-tiny')
    m = build_composer_model(name='hf_causal_lm', tokenizer=None, cfg={
        'pretrained_model_name_or_path': str(tmp_path / 'llama-tiny'), 'pretrained': False,
        'use_auth_token': False})
    assert type(m.model).__name__ == 'LlamaForCausalLM'
    b = _batch()
    loss = m.loss(m(b), b)
    assert torch.isfinite(loss) and abs(float(loss) - torch.log(torch.tensor(64.0))) < 1.0


@pytest.mark.parametrize('over', [
    dict(),
    dict(no_bias=False, attn_config={'attn_impl': 'torch'}),
    dict(attn_config={'attn_impl': 'torch', 'rope': True, 'attn_type': 'grouped_query_attention', 'kv_n_heads': 2},
         ffn_config={'ffn_type': 'mptglu'}),
    dict(attn_config={'attn_impl': 'torch', 'alibi': True, 'attn_type': 'multiquery_attention'},
         ffn_config={'ffn_type': 'torch_dmoe', 'moe_num_experts': 4, 'moe_top_k': 2, 'ffn_hidden_size': 24}),
])
def test_param_formula_matches_built_model(over):
    from foundry_ext.models.accounting import mpt_param_counts
    from foundry_ext.models.moe import DroplessMoE
    over.setdefault('attn_config', {'attn_impl': 'torch'})
    m = _build('foundry_mpt_causal_lm', **over)
    total = sum(p.numel() for p in m.parameters())
    active = total - sum(x.expert_params() - x.active_params() + x.router.weight.numel()
                         for x in m.modules() if isinstance(x, DroplessMoE))
    c = mpt_param_counts({**BASE, **over})
    assert (c['total'], c['active']) == (total, active)


