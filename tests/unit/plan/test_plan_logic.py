"""The planner's logic (pure, no torch): parallelism rules, verdicts, fixes, microbatch, speed, refusals,
and LLM Foundry's published MPT runs (they fit where they ran; impossible configs are flagged)."""
import copy
import importlib.util
import json

import pytest

from foundry_ext.config.load import load
from foundry_ext.errors import UserError
from foundry_ext.models import accounting
from foundry_ext.plan import advice, build, memory, speed
from foundry_ext.plan.inputs import read_setup
from foundry_ext.plan.memory import Cluster, GiB

from conftest import ROOT

_spec = importlib.util.spec_from_file_location('plan_published', ROOT / 'bench' / 'plan_published.py')
pub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pub)


def h100(gpus=8, nodes=1):
    return Cluster('h100-sxm', 79.11 * GiB, gpus, nodes, 'h100-sxm')


def mpt(size='7b', seq=2048, gb=64, mb=4, ac=False, mixed='PURE', strategy='FULL_SHARD', **top):
    cfg = pub.mpt_config(size, seq, gb, mb, ac, mixed, strategy)
    cfg.update(top)
    return cfg


def plan(cfg, cl=None, **kw):
    return build.make_plan(cfg, cl or h100(), **kw)


def test_published_runs_fit_and_impossible_ones_are_flagged():
    rows = pub.rows()
    assert len(rows) > 150
    misses = [(r['model'], r['seq'], r['gpus'], r['gpu'], r['mb']) for r in rows if not r['plan'].memory.fits]
    assert not misses
    # not vacuous: the tightest published runs use most of the GPU
    assert max(r['plan'].memory.total / r['plan'].memory.capacity for r in rows) > 0.95
    for what, cfg, cl in pub.IMPOSSIBLE:
        assert not build.make_plan(cfg, cl, with_fixes=False).memory.fits, what


def test_one_gpu_drops_fsdp_and_checkpointing():
    p = plan(mpt('1b', ac=True), h100(1))
    e = p.memory.effective
    assert e.mode == 'single' and not e.ac and e.shard == 1
    assert 'weight_casts' in p.memory.terms            # amp over fp32 weights
    assert any('drops fsdp_config' in n for n in p.notes)
    assert p.memory.terms['weights'].bytes == 4 * p.setup.model.counts.total


def test_sharding_strategies_order_memory():
    base = mpt('7b', mb=2)
    full = plan(base, h100(8, 2))
    hybrid = plan({**base, 'fsdp_config': {**base['fsdp_config'], 'sharding_strategy': 'HYBRID_SHARD'}}, h100(8, 2))
    zero2 = plan({**base, 'fsdp_config': {**base['fsdp_config'], 'sharding_strategy': 'SHARD_GRAD_OP'}}, h100(8, 2))
    ddp = plan({k: v for k, v in base.items() if k != 'fsdp_config'}, h100(8, 2))
    assert full.memory.effective.shard == 16 and hybrid.memory.effective.shard == 8
    assert full.memory.terms['weights'].bytes * 2 == pytest.approx(hybrid.memory.terms['weights'].bytes)
    P = full.setup.model.counts.total
    assert zero2.memory.terms['fsdp_params'].bytes == 2 * P    # nothing resharded after the forward
    assert 'ddp_buckets' in ddp.memory.terms and ddp.memory.effective.mode == 'ddp'
    assert full.memory.total < hybrid.memory.total < ddp.memory.total
    assert full.memory.effective.groups == 1 and hybrid.memory.effective.groups == 2


def test_checkpointing_keeps_block_inputs_only():
    off, on = plan(mpt('7b', mb=4)), plan(mpt('7b', mb=4, ac=True))
    s = off.setup.model.shape
    assert on.memory.terms['activations'].bytes < off.memory.terms['activations'].bytes / 10
    # checkpointed: one block input per layer (bf16 residual) + the head
    tokens = 4 * 2048
    assert on.memory.terms['activations'].bytes > s.n_layers * 2 * s.d_model * tokens
    assert on.speed.executed_per_token > off.speed.executed_per_token   # the recompute
    assert on.speed.flops_per_token == off.speed.flops_per_token        # MFU convention unchanged


def test_flops_agree_with_mfu_monitor_convention():
    p = plan(mpt('1b'))
    # mfu_monitor computes F.breakdown(model config, seq).flops_per_token: the same number
    assert p.speed.flops_per_token == accounting.breakdown(mpt('1b')['model'], 2048).flops_per_token
    assert p.speed.mfu == pytest.approx(p.speed.tokens_per_s / 8 * p.speed.flops_per_token / 989.5e12)


def test_speed_with_given_mfu_days_cost_and_chinchilla():
    cfg = mpt('1b', gb=64, mb=8)
    p = plan(cfg, mfu=0.5, tokens=26e9, usd_per_gpu_hour=2.0)
    sp = p.speed
    assert sp.tokens_per_s == pytest.approx(0.5 * 989.5e12 * 8 / sp.flops_per_token)
    assert sp.days == pytest.approx(26e9 / sp.tokens_per_s / 86400)
    assert sp.cost_usd == pytest.approx(sp.gpu_hours * 2.0) and sp.gpu_hours == pytest.approx(sp.days * 24 * 8)
    assert sp.chinchilla_tokens == 20 * p.setup.model.counts.total
    assert p.speed.run_tokens_source == '--tokens'
    # from max_duration in batches: 30ba x 64 samples x 2048 tokens
    assert plan(cfg).speed.run_tokens == 30 * 64 * 2048


@pytest.mark.parametrize('text,value', [('26B', 26e9), ('1T', 1e12), ('2.6e10', 2.6e10), ('5_000', 5000),
                                        ('300m', 3e8)])
def test_parse_tokens(text, value):
    assert speed.parse_tokens(text) == pytest.approx(value)


@pytest.mark.parametrize('text', ['-5', '0', 'lots', '1X'])
def test_parse_tokens_rejects(text):
    with pytest.raises(UserError, match='--tokens'):
        speed.parse_tokens(text)


def test_recommended_microbatch_is_the_largest_that_fits():
    cfg = mpt('7b', gb=256, mb=1)
    p = plan(cfg)
    best = p.largest_microbatch
    setup = p.setup
    assert memory.estimate(setup, h100(), best).fits
    assert best == p.memory.device_batch or not memory.estimate(setup, h100(), best + 1).fits
    assert p.recommended_microbatch <= best
    assert memory.estimate(setup, h100(), p.recommended_microbatch).headroom >= memory.TIGHT * h100().memory


def test_auto_microbatch_halves_like_composer():
    p = plan(mpt('7b', gb=256, mb=1, device_train_microbatch_size='auto'))
    assert p.auto_microbatch
    mb = p.memory.microbatch
    assert 32 % mb == 0 and p.memory.fits                     # 32 per GPU, halved until it fits
    assert mb == 32 or not memory.estimate(p.setup, h100(), mb * 2).fits


def test_fixes_fit_and_are_ranked_and_their_overrides_work(tmp_path):
    cfg = mpt('7b', gb=256, mb=16, strategy='HYBRID_SHARD')
    p = plan(cfg, h100(8, 2))
    assert not p.memory.fits and p.fixes
    config = [f for f in p.fixes if f.kind == 'config']
    assert [f.per_gpu_relative for f in config] == sorted((f.per_gpu_relative for f in config), reverse=True)
    assert all(f.memory.fits for f in p.fixes)
    # the overrides, applied to the yaml, give a config the planner says fits
    path = tmp_path / 'c.yaml'
    path.write_text(json.dumps(cfg))
    for f in config[:3]:
        fixed = load(path, list(f.overrides))
        assert build.make_plan(fixed, h100(8, 2), with_fixes=False).memory.fits, f.change


def test_lora_fix_for_hf_models(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps(dict(
        model_type='llama', hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)))
    cfg = {'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(tmp_path),
                     'attn_implementation': 'sdpa'},
           'max_seq_len': 4096, 'global_train_batch_size': 8, 'device_train_microbatch_size': 1,
           'precision': 'amp_bf16', 'optimizer': {'name': 'decoupled_adamw'},
           'fsdp_config': {'sharding_strategy': 'FULL_SHARD', 'mixed_precision': 'PURE'}}
    p = plan(cfg, h100(2))
    assert not p.memory.fits                  # full fine-tuning of 8B on 2 GPUs: 16 B/param / 2
    lora = [f for f in p.fixes if f.kind == 'method']
    assert lora and lora[0].memory.fits and 'peft_config' in lora[0].overrides[0]
    lp = plan({**cfg, 'model': {**cfg['model'], 'peft_config': {'r': 16, 'target_modules': 'all-linear'}}}, h100(2))
    assert lp.setup.model.trainable < lp.setup.model.counts.total / 50
    assert lp.memory.terms['optimizer'].bytes < p.memory.terms['optimizer'].bytes / 50


def test_moe_counts_all_experts_in_memory_active_in_flops():
    cfg = mpt('1b', mb=2)
    cfg['model']['name'] = 'foundry_mpt_causal_lm'
    cfg['model']['ffn_config'] = {'ffn_type': 'torch_dmoe', 'moe_num_experts': 8, 'moe_top_k': 2}
    dense, moe = plan(mpt('1b', mb=2)), plan(cfg)
    c = moe.setup.model.counts
    assert c.total > 3 * c.active / 2
    assert moe.memory.terms['weights'].bytes == pytest.approx(4 * c.total / 8)
    assert moe.memory.terms['activations'].bytes > dense.memory.terms['activations'].bytes


@pytest.mark.parametrize('change,key', [
    ({'tp_config': {'tensor_parallel_degree': 2}}, 'tp_config'),
    ({'compile_config': {}}, 'compile_config'),
    ({'algorithms': {'alibi': {}}}, 'algorithms.alibi'),
    ({'fsdp_config': {'cpu_offload': True}}, 'fsdp_config.cpu_offload'),
    ({'model': {'ffn_config': {'ffn_type': 'mb_moe'}}}, 'model.ffn_config.ffn_type'),
    ({'model': {'name': 'bert_lm'}}, 'model.name'),
    ({'optimizer': {'name': 'shampoo'}}, 'optimizer.name'),
    ({'model': {'attn_config': {'attn_impl': 'flash', 'qk_ln': True}}}, 'model.attn_config.qk_ln'),
])
def test_refuses_what_it_cannot_size_naming_the_key(change, key):
    cfg = copy.deepcopy(mpt('1b'))
    for k, v in change.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    with pytest.raises(UserError) as e:
        read_setup(cfg)
    assert str(e.value).startswith(key) and '\n' not in str(e.value)


def test_ignore_key_plans_anyway_with_a_note():
    cfg = {**mpt('1b'), 'compile_config': {}}
    p = build.make_plan(cfg, h100(), ignore=('compile_config',))
    assert any('compile_config ignored' in n for n in p.notes)


def test_unknown_hf_model_type(tmp_path):
    (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'gpt2', 'n_embd': 768}))
    cfg = {**mpt('1b'), 'model': {'name': 'hf_causal_lm', 'pretrained_model_name_or_path': str(tmp_path)}}
    with pytest.raises(UserError, match="model_type 'gpt2'"):
        read_setup(cfg)


@pytest.mark.parametrize('cfg,msg', [
    (dict(global_train_batch_size=64, device_train_microbatch_size=16), 'larger than the per-device batch 4'),
    (dict(global_train_batch_size=60, device_train_microbatch_size=4), 'not divisible by 16 GPUs'),
])
def test_bad_batches(cfg, msg):
    with pytest.raises(UserError, match=msg):
        plan({**mpt('1b'), **cfg}, h100(16))


def test_host_ram_terms():
    cfg = mpt('7b')
    cfg['model']['init_device'] = 'cpu'
    cfg['save_folder'] = '/tmp/x'
    cfg['fsdp_config']['state_dict_type'] = 'full'
    p = plan(cfg, host_ram=100 * GiB)
    P = p.setup.model.counts.total
    assert p.memory.host_terms['init'].bytes == 8 * 4 * P            # each of 8 ranks builds the fp32 model
    assert p.memory.host_terms['checkpoint'].bytes == pytest.approx(4 * P + 8 * P)   # rank 0: model + Adam
    assert p.host_fits is False
    assert 'checkpoint save' in p.memory.phases                       # FULL_STATE_DICT gathers on the GPU


def test_fixes_when_nothing_fits_say_so():
    p = plan(mpt('70b', gb=8, mb=1, ac=True), Cluster('t4', 14.75 * GiB, 1, 1, 't4'))
    assert not p.memory.fits
    assert all(f.kind == 'hardware' for f in p.fixes) or not p.fixes
    assert advice.fixes(p.setup, p.cluster) == p.fixes
