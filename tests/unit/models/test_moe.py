"""Dropless MoE FFN: exactness, routing losses, determinism, no drops, capacity accounting."""
import pytest
import torch
import torch.nn.functional as F

from foundry_ext.models.moe import DroplessMoE, load_balancing_loss, route, router_z_loss

D, H = 16, 32


def _moe(**kw):
    torch.manual_seed(0)
    return DroplessMoE(D, H, **kw)


@pytest.mark.parametrize('glu', [True, False])
def test_one_expert_top1_equals_dense_ffn(glu):
    m = _moe(num_experts=1, top_k=1, glu=glu)
    x = torch.randn(3, 5, D)
    a = F.silu(x @ m.w1[0])
    if glu:
        a = a * (x @ m.v1[0])
    torch.testing.assert_close(m(x), a @ m.w2[0], atol=1e-6, rtol=1e-6)


def test_matches_per_token_reference_and_router_gets_grad():
    m = _moe(num_experts=4, top_k=2)
    x = torch.randn(2, 7, D)
    y = m(x)
    # Per-token reference (a loop over tokens, only in the test)
    xt = x.reshape(-1, D)
    _, w, idx = route(m.router(xt), 2)
    ref = torch.stack([sum(w[t, j] * m._expert(int(idx[t, j]), xt[t:t + 1])[0] for j in range(2))
                       for t in range(xt.shape[0])])
    torch.testing.assert_close(y.reshape(-1, D), ref, atol=1e-5, rtol=1e-5)
    (y.pow(2).sum() + m.aux_loss).backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in (m.w1, m.v1, m.w2))


def test_router_grad_from_task_loss_alone():
    m = _moe(num_experts=4, top_k=2, loss_weight=0.0, z_loss_weight=0.0)
    m(torch.randn(9, D)).sum().backward()
    assert m.router.weight.grad.abs().sum() > 0  # through the top-k weights


def test_aux_loss_closed_form_on_hand_built_routing():
    # 4 tokens, 2 experts, top-1. Logits chosen so tokens 0,1,2 -> expert 0, token 3 -> expert 1.
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 3.0]])
    probs, _, idx = route(logits, 1)
    assert idx.flatten().tolist() == [0, 0, 0, 1]
    p = torch.softmax(logits, -1)
    f = torch.tensor([3 / 4, 1 / 4])                 # fraction of tokens per expert
    P = p.mean(0)                                    # mean router probability per expert
    expected = 2 * (f * P).sum()                     # Switch: E * sum_e f_e P_e
    torch.testing.assert_close(load_balancing_loss(probs, idx, 2), expected)
    z = (torch.logsumexp(logits, -1) ** 2).mean()
    torch.testing.assert_close(router_z_loss(logits), z)
    # uniform routing gives exactly 1
    flat = torch.zeros(4, 2)
    _, _, idx = route(flat + torch.tensor([[1e-3, 0], [0, 1e-3], [1e-3, 0], [0, 1e-3]]), 1)
    assert abs(float(load_balancing_loss(torch.full((4, 2), 0.5), idx, 2)) - 1.0) < 1e-6


def test_module_aux_loss_is_weighted_sum():
    m = _moe(num_experts=4, top_k=2, loss_weight=0.1, z_loss_weight=0.01)
    m(torch.randn(10, D))
    s = m.stats
    torch.testing.assert_close(m.aux_loss.detach(), 0.1 * s.lbl + 0.01 * s.z_loss)


def test_deterministic_and_dropless():
    m = _moe(num_experts=8, top_k=2)
    x = torch.randn(4, 33, D)
    y1, y2 = m(x), m(x)
    assert torch.equal(y1, y2)
    assert m.stats.dropped == 0 and int(m.stats.tokens_per_expert.sum()) == 4 * 33 * 2


def test_capacity_factor_drops_and_counts():
    m = _moe(num_experts=4, top_k=1, capacity_factor=0.5)
    with torch.no_grad():  # send every token to expert 2
        m.router.weight.zero_()
        m.router.weight[2] = 1.0
    x = torch.rand(16, D) + 0.1
    y = m(x)
    cap = m.capacity(16)  # ceil(0.5 * 16 / 4) = 2
    assert cap == 2 and m.stats.dropped == 16 - cap
    assert (y[cap:] == 0).all() and (y[:cap] != 0).any()  # the first tokens keep their slot
    y.sum().backward()  # experts that got no token get zero gradient, not an error
    assert m.w1.grad[0].abs().sum() == 0 and m.w1.grad[2].abs().sum() > 0


def test_bad_config():
    with pytest.raises(ValueError, match=r'top_k \(3\) must be between 1 and num_experts \(2\)'):
        DroplessMoE(D, H, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match='activation'):
        DroplessMoE(D, H, activation='swishy')


def test_active_params():
    m = _moe(num_experts=8, top_k=2, glu=True)
    assert m.expert_params() == 8 * 3 * D * H
    assert m.active_params() == 8 * D + 2 * 3 * D * H
