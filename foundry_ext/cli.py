"""`foundry-ext <verb>` (= `python -m foundry_ext <verb>`): the one command line.

train, eval and prep hand the rest of the command line to their command (the same code as
``scripts/train.py``, ``scripts/eval.py`` and ``data_prep/*.py``); the other verbs are parsed here.
Commands print; the library logs. A user mistake is one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from foundry_ext.errors import UserError, exit_with


def _train(argv: list[str]) -> int:
    from foundry_ext.commands.train import main
    return main(argv)


def _eval(argv: list[str]) -> int:
    from foundry_ext.commands.eval import main
    return main(argv)


def _prep(argv: list[str]) -> int:
    from foundry_ext.commands.prep import main
    return main(argv)


def _plan(argv: list[str]) -> int:
    from foundry_ext.commands.plan import main
    return main(argv)


# verbs whose options belong to the command they call (argparse would eat their key=value / --flags)
PASS_THROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    'train': (_train, 'train a model: <config.yaml> [key=value ...] (as composer scripts/train.py)'),
    'eval': (_eval, 'run a gauntlet: <eval.yaml> [key=value ...] (as composer scripts/eval.py)'),
    'prep': (_prep, 'convert data to MDS: text | jsonl | hf | sft [options] (as data_prep/*.py)'),
    'plan': (_plan, 'will it fit, how long, how much: <config.yaml> [key=value ...] --gpu NAME --gpus N (--diff a b)'),
}


def _corpus(a: argparse.Namespace) -> None:
    from foundry_ext.prep.corpus import build_corpus
    m = build_corpus(a.out, size_mb=a.size_mb, seed=a.seed, mix=a.mix, val_fraction=a.val_fraction,
                     overwrite=a.overwrite)
    for d, s in m['domains'].items():
        print(f"{d:>10}: train {s['train']['docs']:>6} docs {s['train']['bytes'] / 1e6:7.2f} MB | "
              f"val {s['val']['docs']:>5} docs {s['val']['bytes'] / 1e6:6.2f} MB  {s.get('note', '')}")
    print(f'corpus written to {a.out}')


def _tokenizer(a: argparse.Namespace) -> None:
    from foundry_ext.prep.corpus import iter_texts, list_domains
    from foundry_ext.prep.tokenizer import train_tokenizer
    list_domains(a.corpus)
    train_tokenizer(iter_texts(a.corpus, 'train'), a.out, vocab_size=a.vocab_size,
                    max_train_mb=a.max_train_mb, overwrite=a.overwrite)
    print(f'tokenizer ({a.vocab_size} tokens) written to {a.out}')


def _report(a: argparse.Namespace) -> None:
    from foundry_ext.runs.report import write_report
    print(f'report: {write_report(a.run_dir, mds_root=a.mds, new_domains=a.new)}')


def _eval_data(a: argparse.Namespace) -> None:
    from foundry_ext.gauntlet.starter import generate
    counts = generate(a.corpus, a.out, seed=a.seed, n=a.n)
    print(f"starter gauntlet tasks ({', '.join(f'{k} {v}' for k, v in counts.items())}) written to {a.out}")


def _mixplot(a: argparse.Namespace) -> None:
    from foundry_ext.data.mixing.plot import plot_mix
    print(f'mix plot: {plot_mix(a.run_dir, a.out)}')


def _export(a: argparse.Namespace) -> None:
    from foundry_ext.commands.export import run
    run(a)


def _show_labels(a: argparse.Namespace) -> None:
    import sys as _sys

    from foundry_ext.finetune.labels import show_labels
    cfg = None
    if a.source.endswith(('.yaml', '.yml')):
        from foundry_ext.config.load import load
        cfg = load(a.source, list(a.overrides))
    print(show_labels(a.source, n=a.n, tokenizer=a.tokenizer, train_on=a.train_on, split=a.split,
                      max_seq_len=a.max_seq_len, seed=a.seed, color=_sys.stdout.isatty() and not a.no_color,
                      cfg=cfg))


def _sft_data(a: argparse.Namespace) -> None:
    from foundry_ext.finetune.instructions import write
    m = write(a.corpus, a.out, a.tokenizer, a.chat_template, seed=a.seed, n_train=a.n_train,
              n_heldout=a.n_heldout, style=a.style, overwrite=a.overwrite)
    c = m['counts']
    n = {s: sum(v for k, v in c[s].items() if k != 'multi_turn') for s in c}
    print(f"instruction set written to {a.out}: train {n['train']} ({c['train']['multi_turn']} multi-turn), "
          f"held-out {n['heldout']}; chat template {m['chat_template']}; gauntlet tasks in {a.out}/gauntlet/tasks.yaml")


def _sft_eval(a: argparse.Namespace) -> None:
    import json as _json

    from foundry_ext.env import set_offline_defaults
    from foundry_ext.finetune.evaluate import evaluate, table
    set_offline_defaults()
    results = [evaluate(m, a.data, a.max_new_tokens, a.limit, a.device) for m in [*a.compare, a.model]]
    print(table(results))
    if a.out:
        from pathlib import Path
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(_json.dumps(results if a.compare else results[0], indent=1) + '\n')
        print(f'sft-eval results: {a.out}')


def _fmt(n: int) -> str:
    return f'{n:,} ({n / 1e9:.2f}B)' if n >= 1e8 else f'{n:,} ({n / 1e6:.2f}M)'


def _params(a: argparse.Namespace) -> None:
    from foundry_ext.config.load import load
    from foundry_ext.models.accounting import header_line, mpt_param_counts
    for path in a.yamls:
        model = load(path).get('model')
        if not isinstance(model, dict):
            raise UserError(f'{path} has no model section')
        try:
            c = mpt_param_counts(model)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f'{path}: cannot count parameters: {e}') from None
        print(f"{path}: total {_fmt(c['total'])}, active {_fmt(c['active'])}, embedding {_fmt(c['embedding'])}")
        print(f'  {header_line(model)}')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='foundry-ext', description='foundry_ext: pretrain, fine-tune and evaluate LLMs '
                                'on Composer / LLM Foundry.')
    sub = p.add_subparsers(dest='verb', required=True, metavar='<verb>')
    for verb, (_, help_) in PASS_THROUGH.items():
        sub.add_parser(verb, help=help_, add_help=False)

    c = sub.add_parser('corpus', help='build the embedded multi-domain corpus (offline, deterministic)')
    c.add_argument('--out', required=True)
    c.add_argument('--size_mb', type=float, default=8.0, help='total size over all domains (default 8)')
    c.add_argument('--seed', type=int, default=17)
    c.add_argument('--mix', default=None, help='domain fractions, e.g. code=0.4,prose=0.3,arithmetic=0.15,records=0.15')
    c.add_argument('--val_fraction', type=float, default=0.05)
    c.add_argument('--overwrite', action='store_true')
    c.set_defaults(fn=_corpus)

    t = sub.add_parser('tokenizer', help='train a byte-level BPE tokenizer on a corpus folder')
    t.add_argument('--corpus', required=True)
    t.add_argument('--out', required=True)
    t.add_argument('--vocab_size', type=int, default=4096)
    t.add_argument('--max_train_mb', type=float, default=32.0)
    t.add_argument('--overwrite', action='store_true')
    t.set_defaults(fn=_tokenizer)

    g = sub.add_parser('eval-data', help='generate the starter gauntlet task files from a corpus held-out split')
    g.add_argument('--corpus', default='data/corpus')
    g.add_argument('--out', default='data/eval/starter')
    g.add_argument('--seed', type=int, default=17)
    g.add_argument('--n', type=int, default=250, help='examples per task (at most)')
    g.set_defaults(fn=_eval_data)

    r = sub.add_parser('report', help='markdown + loss-curve PNG for a training run folder')
    r.add_argument('run_dir')
    r.add_argument('--mds', default=None, help='MDS root, for the unigram baselines')
    r.add_argument('--new', nargs='+', default=None, metavar='DOMAIN',
                   help='continued runs: the eval domain(s) this run adds (default: variables.new_domains)')
    r.set_defaults(fn=_report)

    m = sub.add_parser('mixplot', help='planned vs realized mixture weights of a run -> PNG (mixture loader runs)')
    m.add_argument('run_dir', help='run folder with metrics.jsonl (or the file itself)')
    m.add_argument('--out', default=None, help='PNG path (default <run_dir>/mix_weights.png)')
    m.set_defaults(fn=_mixplot)

    x = sub.add_parser('export', help='a Composer checkpoint or run folder -> a verified Hugging Face model folder')
    from foundry_ext.commands.export import add_arguments
    add_arguments(x)
    x.set_defaults(fn=_export)

    sl = sub.add_parser('show-labels', help='SFT examples with the trained tokens marked, and the trained-token '
                        'fraction (a yaml, an SFT MDS folder or jsonl)')
    sl.add_argument('source', help='training yaml (its train_loader), `prep sft` MDS folder, or jsonl file')
    sl.add_argument('overrides', nargs='*', help='key=value overrides of a yaml')
    sl.add_argument('--n', type=int, default=3, help='examples to show (default 3)')
    sl.add_argument('--tokenizer', default=None, help='tokenizer folder (default: the yaml\'s / the MDS\'s)')
    sl.add_argument('--train_on', default=None, help='last_assistant | all_assistant | everything')
    sl.add_argument('--split', default=None, help='MDS split (default: the yaml\'s, else the first)')
    sl.add_argument('--max_seq_len', type=int, default=None)
    sl.add_argument('--seed', type=int, default=None, help='show a seeded random sample instead of the first n')
    sl.add_argument('--no_color', action='store_true', help='mark with « » even on a terminal')
    sl.set_defaults(fn=_show_labels)

    sd = sub.add_parser('sft-data', help='generate the instruction set (records questions, word problems) '
                        'with a held-out split and its gauntlet tasks')
    sd.add_argument('--corpus', default='data/corpus')
    sd.add_argument('--out', default='data/sft')
    sd.add_argument('--tokenizer', default='data/tokenizer', help='renders the held-out prompts (its chat template, '
                    'else ChatML)')
    sd.add_argument('--chat_template', default=None, help='chatml | tokenizer | file | Jinja string')
    sd.add_argument('--style', default='chat', choices=['chat', 'prompt_response'])
    sd.add_argument('--seed', type=int, default=17)
    sd.add_argument('--n_train', type=int, default=3000)
    sd.add_argument('--n_heldout', type=int, default=200)
    sd.add_argument('--overwrite', action='store_true')
    sd.set_defaults(fn=_sft_data)

    se = sub.add_parser('sft-eval', help='held-out exact match and format-following on sft-data questions')
    se.add_argument('--model', required=True, help='run folder, Composer .pt or HF model folder')
    se.add_argument('--data', default='data/sft', help='the sft-data folder')
    se.add_argument('--compare', nargs='*', default=[], help='other models (e.g. before SFT) in the same table')
    se.add_argument('--max_new_tokens', type=int, default=24)
    se.add_argument('--limit', type=int, default=None)
    se.add_argument('--device', default=None)
    se.add_argument('--out', default=None, help='write the results as JSON')
    se.set_defaults(fn=_sft_eval)

    q = sub.add_parser('params', help='total / active parameters of the model in training yamls')
    q.add_argument('yamls', nargs='+')
    q.set_defaults(fn=_params)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]][0](argv[1:])
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except UserError as e:
        return exit_with(e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
