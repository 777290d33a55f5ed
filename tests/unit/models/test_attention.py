"""Attention backends agree with a plain-math reference (fp32 on CPU) for every masking mode."""
import itertools
import math

import pytest
import torch

from foundry_ext.errors import UserError
from foundry_ext.models import attention as A

ATOL = 1e-5  # fp32, tiny shapes: the backends differ only by summation order
B, S, D = 2, 12, 8


def reference(q, k, v, causal=True, sequence_id=None, key_padding_mask=None, sliding_window=-1, slopes=None):
    """Loop-free textbook attention, written independently of the module under test."""
    b, s, h, d = q.shape
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    scores = torch.einsum('bihd,bjhd->bhij', q, k) / math.sqrt(d)
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    if slopes is not None:
        scores = scores - slopes[None, :, None, None] * (i - j).abs()
    ok = torch.ones(b, 1, s, s, dtype=torch.bool)
    if causal:
        ok &= j <= i
    if sliding_window >= 0:
        ok &= (i - j).abs() <= sliding_window
    if sequence_id is not None:
        ok &= sequence_id[:, None, :, None] == sequence_id[:, None, None, :]
    if key_padding_mask is not None:
        ok &= key_padding_mask[:, None, None, :]
    scores = scores.masked_fill(~ok, float('-inf'))
    return torch.einsum('bhij,bjhd->bihd', torch.softmax(scores, -1), v)


def _inputs(h, hkv, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: torch.randn(B, S, n, D, generator=g, requires_grad=True)  # noqa: E731
    return mk(h), mk(hkv), mk(hkv)


SEQ_ID = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 7 + [1] * 5])
MODES = {
    'causal': dict(),
    'full': dict(causal=False),
    'sequence_id': dict(sequence_id=SEQ_ID),
    'sliding_window': dict(sliding_window=3),
    'seqid+window': dict(sequence_id=SEQ_ID, sliding_window=2),
    'alibi': dict(slopes=True),
    'alibi+seqid': dict(slopes=True, sequence_id=SEQ_ID),
}
HEADS = {'mha': (4, 4), 'gqa': (4, 2), 'mqa': (4, 1)}
CPU_IMPLS = [i for i in ('sdpa', 'torch', 'auto')]


@pytest.mark.parametrize('impl,mode,heads', list(itertools.product(CPU_IMPLS, MODES, HEADS)))
def test_backend_matches_reference_fwd_and_grad(impl, mode, heads):
    kw = dict(MODES[mode])
    h, hkv = HEADS[heads]
    slopes = A.alibi_slopes(h) if kw.pop('slopes', False) else None
    q, k, v = _inputs(h, hkv)
    out = A.attention(q, k, v, impl=impl, alibi_slopes=slopes, **kw)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = reference(q2, k2, v2, slopes=slopes, **kw)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, atol=ATOL, rtol=ATOL)


def test_sequence_id_never_crosses_documents():
    q, k, v = _inputs(2, 2)
    out = A.attention(q, k, v, impl='sdpa', sequence_id=SEQ_ID)
    v2 = v.detach().clone()
    v2[0, 5:] += 100.0  # change documents 1 and 2 of row 0: document 0's outputs must not move
    out2 = A.attention(q, k, v2, impl='sdpa', sequence_id=SEQ_ID)
    torch.testing.assert_close(out[0, :5], out2[0, :5])
    assert not torch.allclose(out[0, 5:], out2[0, 5:])


def test_padding_and_additive_bias():
    q, k, v = _inputs(4, 2)
    pad = torch.ones(B, S, dtype=torch.bool)
    pad[1, :3] = False  # left padding: queries 0..2 of row 1 see no key -> zeros, never NaN
    for impl in ('sdpa', 'torch'):
        out = A.attention(q, k, v, impl=impl, key_padding_mask=pad)
        assert torch.isfinite(out).all() and out[1, :3].abs().sum() == 0
        torch.testing.assert_close(out[1, 3:], reference(q, k, v, key_padding_mask=pad)[1, 3:], atol=ATOL, rtol=ATOL)
    bias = torch.randn(1, 4, S, S)
    a = A.attention(q, k, v, impl='sdpa', attn_bias=bias)
    b = A.attention(q, k, v, impl='torch', attn_bias=bias)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)


def test_rope_is_a_rotation_and_relative():
    q, k, _ = _inputs(2, 2)
    qr, kr = A.apply_rope(q, k)
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    # scores depend only on relative positions: shifting all positions leaves q.k unchanged
    qs, ks = A.apply_rope(q, k, positions=torch.arange(S) + 7)
    torch.testing.assert_close(torch.einsum('bihd,bjhd->bhij', qr, kr), torch.einsum('bihd,bjhd->bhij', qs, ks),
                               atol=1e-4, rtol=1e-4)


def test_impl_resolution_and_errors():
    assert A.check_impl('auto', cuda=False, flash_installed=True) == 'sdpa'
    assert A.check_impl('auto', cuda=True, flash_installed=True) == 'flash'
    assert A.check_impl('auto', cuda=True, flash_installed=False) == 'sdpa'
    with pytest.raises(UserError, match=r"attn_impl 'sdpaa' is not one of auto, flash, sdpa, torch; did you mean 'sdpa'"):
        A.check_impl('sdpaa', cuda=False)
    with pytest.raises(UserError, match='needs the flash-attn package .* and a CUDA device; attn_impl auto would use sdpa'):
        A.check_impl('flash', cuda=False, flash_installed=False)
    with pytest.raises(UserError, match='needs a CUDA device; attn_impl auto'):
        A.check_impl('flash', cuda=False, flash_installed=True)
    q, k, v = _inputs(3, 2)
    with pytest.raises(ValueError, match='divisible'):
        A.attention(q, k, v, impl='torch')


@pytest.mark.skipif(not (torch.cuda.is_available() and A.flash_attn_installed()), reason='needs CUDA + flash-attn')
def test_flash_matches_reference_on_gpu():
    for mode, heads in itertools.product(MODES, HEADS):
        kw = dict(MODES[mode])
        h, hkv = HEADS[heads]
        slopes = A.alibi_slopes(h).cuda() if kw.pop('slopes', False) else None
        kw = {n: (t.cuda() if torch.is_tensor(t) else t) for n, t in kw.items()}
        q, k, v = (t.detach().cuda().bfloat16() for t in _inputs(h, hkv))
        out = A.attention(q, k, v, impl='flash', alibi_slopes=slopes, **kw)
        ref = reference(q.float(), k.float(), v.float(), slopes=slopes, **kw)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
