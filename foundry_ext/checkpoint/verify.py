"""Does an exported HF folder compute what the checkpoint computed? (pure torch + transformers)

:func:`reference` runs the source model once on fixed inputs -- token ids of a few probe texts and
seeded random ids -- and greedy-decodes a few prompts; :func:`compare` runs the reloaded export on
the same inputs: the max absolute logit difference and the mean KL(source || export) per position
must stay under tolerances and every greedy continuation must be identical. :func:`tokenizer_problems`
checks that the exported tokenizer encodes the probes the same way and kept its special tokens,
chat template and length limit. Together they catch the silent export bugs: embeddings left at
their random init, a wrong GQA head count, a dropped tokenizer setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ['PROBE_TEXTS', 'Reference', 'Verdict', 'probe_ids', 'reference', 'compare', 'tokenizer_problems',
           'KL_TOL', 'ATOL']

KL_TOL = 1e-5     # mean KL(source || export) in nats per position
ATOL = 1e-2       # max |logit difference|
PROBE_TEXTS = (
    'def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n',
    'The river ran past the old stone mill, and the children watched the light on the water.',
    'Q: What is 17 plus 25? A: 17 + 25 = 42.',
    'name: Ada Lovelace | born: 1815 | city: London | field: mathematics',
)
CHAT_PROBE = [{'role': 'user', 'content': 'What is 2 + 3?'}, {'role': 'assistant', 'content': '5'}]


@dataclass
class Reference:
    ids: Any                      # (n, seq) probe token ids
    logits: Any                   # (n, seq, vocab) float32 logits of the source model
    prompts: list[list[int]]      # greedy prompts
    greedy: list[list[int]]       # their greedy continuations


@dataclass
class Verdict:
    max_abs: float
    kl: float
    greedy_equal: int
    greedy_total: int
    new_tokens: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f'max |logit diff| {self.max_abs:.2e}, KL {self.kl:.2e} nats/position, greedy {self.greedy_equal}/'
                f'{self.greedy_total} prompts identical over {self.new_tokens} tokens')


def probe_ids(tokenizer: Any, vocab_size: int, seq: int = 32, n_random: int = 2, seed: int = 0) -> Any:
    """Fixed inputs: each probe text's tokens (repeated to ``seq``) + ``n_random`` rows of seeded ids."""
    import torch
    rows = []
    for text in PROBE_TEXTS:
        ids = tokenizer(text, add_special_tokens=False)['input_ids'] or [0]
        rows.append((ids * (seq // len(ids) + 1))[:seq])
    g = torch.Generator().manual_seed(seed)
    high = max(2, min(int(vocab_size), len(tokenizer)))
    out = torch.tensor(rows, dtype=torch.long)
    return torch.cat([out, torch.randint(0, high, (n_random, seq), generator=g)])


def _logits(model: Any, ids: Any) -> Any:
    import torch
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return (out.logits if hasattr(out, 'logits') else out[0]).float()


def _greedy(model: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Argmax decoding of equally long prompts in one batch, without a KV cache (the same arithmetic
    for every model class)."""
    import torch
    if not prompts or n <= 0:
        return [[] for _ in prompts]
    seq = torch.tensor(prompts)
    for _ in range(n):
        seq = torch.cat([seq, _logits(model, seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, len(prompts[0]):].tolist()


def reference(model: Any, ids: Any, n_prompts: int = 2, prompt_len: int = 8, new_tokens: int = 12) -> Reference:
    model.eval()
    prompts = [ids[i, :prompt_len].tolist() for i in range(min(n_prompts, ids.shape[0]))]
    return Reference(ids, _logits(model, ids), prompts, _greedy(model, prompts, new_tokens))


def compare(ref: Reference, model: Any, atol: float = ATOL, kl_tol: float = KL_TOL) -> Verdict:
    import torch
    model.eval()
    got = _logits(model, ref.ids)
    if got.shape != ref.logits.shape:
        return Verdict(float('inf'), float('inf'), 0, len(ref.prompts), len(ref.greedy[0]) if ref.greedy else 0,
                       [f'the exported model returns logits of shape {tuple(got.shape)}, the checkpoint '
                        f'{tuple(ref.logits.shape)} (vocabulary size changed?)'])
    max_abs = float((got - ref.logits).abs().max())
    lp, lq = torch.log_softmax(ref.logits.double(), -1), torch.log_softmax(got.double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    greedy = _greedy(model, ref.prompts, len(ref.greedy[0]) if ref.greedy else 0)
    same = sum(a == b for a, b in zip(greedy, ref.greedy))
    v = Verdict(max_abs, kl, same, len(ref.prompts), len(ref.greedy[0]) if ref.greedy else 0)
    if not (kl <= kl_tol):          # NaN fails too
        v.problems.append(f'KL(checkpoint || export) is {kl:.3g} nats per position (tolerance {kl_tol:g})')
    if not (max_abs <= atol):
        v.problems.append(f'logits differ by up to {max_abs:.3g} (tolerance {atol:g})')
    if same != len(ref.prompts):
        i = next(i for i, (a, b) in enumerate(zip(greedy, ref.greedy)) if a != b)
        j = next(k for k, (a, b) in enumerate(zip(greedy[i], ref.greedy[i])) if a != b)
        v.problems.append(f'greedy decoding of probe {i} differs at new token {j} '
                          f'({ref.greedy[i][j]} in the checkpoint, {greedy[i][j]} exported)')
    return v


def generate_problems(model: Any, tok: Any, new_tokens: int = 6) -> list[str]:
    """``model.generate(**tokenizer(text))`` -- what a user runs first -- works and is the greedy decode."""
    import torch
    enc = tok(PROBE_TEXTS[2], return_tensors='pt')
    try:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    except Exception as e:
        return [f'model.generate(**tokenizer(text)) fails: {type(e).__name__}: {" ".join(str(e).split())[:160]}']
    got = out[0, enc['input_ids'].shape[1]:].tolist()
    want = _greedy(model, [enc['input_ids'][0].tolist()], len(got))[0]
    return [] if got == want else [f'model.generate() greedy output {got} differs from argmax decoding {want}']


def _special(tok: Any) -> dict[str, Any]:
    return {k: getattr(tok, k, None) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id', 'unk_token_id')}


def tokenizer_problems(src: Any, out: Any, config: Optional[dict] = None,
                       generation: Optional[dict] = None) -> list[str]:
    """What the exported tokenizer / config / generation config lost compared to the source tokenizer."""
    problems = []
    if len(src) != len(out):
        problems.append(f'the exported tokenizer has {len(out)} tokens, the checkpoint\'s {len(src)}')
    for text in PROBE_TEXTS:
        a, b = src(text)['input_ids'], out(text)['input_ids']
        if a != b:
            problems.append(f'the exported tokenizer encodes {text[:24]!r}... differently ({a[:6]} vs {b[:6]})')
            break
    s, o = _special(src), _special(out)
    for k in s:
        if s[k] != o[k]:
            problems.append(f'tokenizer {k} is {o[k]} in the export, {s[k]} in the checkpoint')
    if (src.chat_template or None) != (out.chat_template or None):
        problems.append('the chat template was not kept' if src.chat_template else
                        'the export has a chat template the checkpoint did not')
    elif src.chat_template:
        try:
            a = src.apply_chat_template(CHAT_PROBE, tokenize=False)
            b = out.apply_chat_template(CHAT_PROBE, tokenize=False)
            if a != b:
                problems.append('the chat template renders a conversation differently in the export')
        except Exception:  # a template that rejects the probe conversation: equal templates, nothing to compare
            pass
    if getattr(src, 'model_max_length', None) != getattr(out, 'model_max_length', None):
        problems.append(f'tokenizer model_max_length is {out.model_max_length} in the export, '
                        f'{src.model_max_length} in the checkpoint')
    if config is not None and isinstance(config.get('vocab_size'), int) and config['vocab_size'] < len(src):
        problems.append(f"config vocab_size {config['vocab_size']} is smaller than the tokenizer ({len(src)})")
    if generation is not None:
        for k in ('eos_token_id', 'bos_token_id', 'pad_token_id'):
            want, have = s.get(k), generation.get(k)
            if want is not None and have is not None and want != have and not (isinstance(have, list) and want in have):
                problems.append(f'generation_config {k} is {have}, the tokenizer says {want}')
    return problems
