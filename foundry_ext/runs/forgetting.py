"""Before / after per eval domain for a run that starts from trained weights (continued pretraining,
LoRA, fine-tuning): the new domains' gain and the old domains' forgetting (pure, no torch).

A run is *continued* when it loads a checkpoint (``load_path``), starts from a pretrained HF folder
(``hf_causal_lm`` with ``pretrained`` not false) or trains adapters (``peft_config``). The new domains
come from ``foundry-ext report --new`` or the yaml's ``variables.new_domains``; every other eval
domain is *old*, with its share of the training mix (replay) read from the ``mixture`` schedule.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

__all__ = ['is_continued', 'new_domains', 'mix_shares', 'forgetting_lines']

Points = Sequence[tuple[Any, float]]


def is_continued(hparams: Mapping[str, Any]) -> bool:
    model = hparams.get('model') if isinstance(hparams.get('model'), Mapping) else {}
    assert isinstance(model, Mapping)
    return bool(hparams.get('load_path')) or bool(model.get('peft_config')) or (
        model.get('name') == 'hf_causal_lm' and model.get('pretrained', True) is not False)


def new_domains(hparams: Mapping[str, Any], explicit: Optional[Sequence[str]] = None) -> list[str]:
    if explicit:
        return list(explicit)
    v = (hparams.get('variables') or {}).get('new_domains') if isinstance(hparams.get('variables'), Mapping) else None
    if isinstance(v, str):
        return [v]
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else []


def mix_shares(hparams: Mapping[str, Any]) -> dict[str, float]:
    """Each train stream's share of the mix, averaged over the schedule's points (``mixture``), or
    equal shares of the ``corpus_text`` domains; empty when the loader says nothing about domains."""
    loader = hparams.get('train_loader') if isinstance(hparams.get('train_loader'), Mapping) else {}
    assert isinstance(loader, Mapping)
    points = ((loader.get('schedule') or {}).get('points') or []) if isinstance(loader.get('schedule'), Mapping) else []
    totals: dict[str, float] = {}
    for p in points:
        w = p.get('weights') or {} if isinstance(p, Mapping) else {}
        s = sum(float(x) for x in w.values()) or 1.0
        for k, x in w.items():
            totals[k] = totals.get(k, 0.0) + float(x) / s / len(points)
    if totals:
        return totals
    domains = (loader.get('dataset') or {}).get('domains') if isinstance(loader.get('dataset'), Mapping) else None
    if isinstance(domains, list) and domains:
        return {str(d): 1.0 / len(domains) for d in domains}
    return {}


def forgetting_lines(evals: Mapping[str, Points], hparams: Mapping[str, Any],
                     explicit_new: Optional[Sequence[str]] = None) -> list[str]:
    """Markdown: one row per eval domain (role, before, after, change) and the summary lines."""
    if not evals:
        return []
    new = new_domains(hparams, explicit_new)
    shares = mix_shares(hparams)
    first_step = min(pts[0][0] for pts in evals.values())
    lines = ['## Before and after this run', '',
             '| eval domain | role | before | after | change |', '|---|---|---|---|---|']
    old_changes: dict[str, float] = {}
    for label in sorted(evals, key=lambda lb: (lb not in new, lb)):
        (_, before), (_, after) = evals[label][0], evals[label][-1]
        if label in new:
            role = 'new'
        elif shares:
            role = f'old, {100 * shares[label]:.0f}% of the mix (replay)' if shares.get(label) else 'old, not trained'
        else:
            role = 'old'
        if label not in new:
            old_changes[label] = after - before
        lines.append(f'| {label} | {role} | {before:.3f} | {after:.3f} | {after - before:+.3f} |')
    lines.append('')
    steps = f'batch {first_step} -> batch {max(p[-1][0] for p in evals.values())}'
    for label in new:
        if label in evals:
            (_, b), (_, a) = evals[label][0], evals[label][-1]
            lines.append(f'New domain **{label}**: {b:.3f} -> {a:.3f} ({a - b:+.3f} nats/token, {steps}).')
    if old_changes:
        worst = max(old_changes, key=lambda k: old_changes[k])
        mean = sum(old_changes.values()) / len(old_changes)
        lines.append(f'Forgetting on the old domains (after - before; > 0 is forgotten): mean {mean:+.3f}, '
                     f'worst {worst} {old_changes[worst]:+.3f}.')
    if not new:
        lines.append('Name the domain(s) this run adds with `foundry-ext report --new <domain>` or '
                     '`variables.new_domains` in the yaml.')
    if first_step != 0:
        lines.append(f'"before" is the first eval (batch {first_step}); set eval_first: true to measure the loaded '
                     'model itself.')
    lines.append('')
    return lines
