"""Train a byte-level BPE tokenizer locally and save it as a Hugging Face tokenizer folder.

The folder loads with ``AutoTokenizer.from_pretrained(<dir>)`` and with LLM Foundry's
``tokenizer: {name: <dir>}``: no hub, no network.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from foundry_ext.atomic import atomic_dir
from foundry_ext.errors import UserError

EOS = '<|endoftext|>'
PAD = '<|pad|>'


def _limited(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    seen = 0
    for t in texts:
        if seen >= max_bytes:
            return
        seen += len(t)
        yield t


def train_tokenizer(texts: Iterable[str], out: str | Path, vocab_size: int = 4096,
                    max_train_mb: float = 32.0, overwrite: bool = False,
                    model_max_length: int = 2048) -> Path:
    """Train byte-level BPE on ``texts`` (first ``max_train_mb`` MB) and save to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise UserError(f'--vocab_size must be at least 300 (256 bytes + merges + specials), got {vocab_size}')
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    count = {'n': 0}

    def counted(it):
        for t in it:
            count['n'] += 1
            yield t

    tok.train_from_iterator(counted(_limited(texts, int(max_train_mb * 1e6))), trainer=trainer)
    if count['n'] == 0:
        raise UserError('no training text for the tokenizer: the corpus is empty; '
                        'build one with `python -m foundry_ext corpus`')
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                 unk_token=EOS, pad_token=PAD, model_max_length=model_max_length)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hf.save_pretrained(str(tmp))
    return Path(out)


def tokenizer_vocab_size(path: str | Path) -> int | None:
    """Vocabulary size (incl. added tokens) of a local HF tokenizer folder, read from
    ``tokenizer.json`` without importing transformers; None when it can't be read."""
    f = Path(path) / 'tokenizer.json'
    try:
        data = json.loads(f.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    ids = set((data.get('model') or {}).get('vocab', {}).values())
    ids |= {t['id'] for t in data.get('added_tokens', [])}
    return max(ids) + 1 if ids else None


TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'tokenizer.model', 'spiece.model',
                   'vocab.txt')


def tokenizer_folder_problem(path: str | Path) -> str | None:
    """One line when a local folder cannot be a HF tokenizer (no tokenizer files, or a
    ``tokenizer.json`` / ``tokenizer_config.json`` that is not valid JSON), else None."""
    p = Path(path)
    if not p.is_dir():
        return None
    present = [n for n in TOKENIZER_FILES if (p / n).is_file()]
    if not present:
        return (f'folder {p} has no tokenizer files ({", ".join(TOKENIZER_FILES[:2])}, ...); build one with '
                f'`foundry-ext tokenizer --corpus <corpus> --out {p}`')
    for n in ('tokenizer.json', 'tokenizer_config.json'):
        if n in present:
            try:
                json.loads((p / n).read_text(encoding='utf-8'))
            except (OSError, ValueError) as e:
                why = 'is empty' if (p / n).stat().st_size == 0 else f'is not valid JSON ({str(e)[:80]})'
                return f'{p / n} {why} (truncated or corrupt); rebuild the tokenizer or restore the file'
    return None


def special_token_id(tokenizer_dir: Path, tok, name: str) -> int | None:
    """Id of the special token ``name`` (e.g. ``eos_token``) named in ``tokenizer_config.json``."""
    cfg = tokenizer_dir / 'tokenizer_config.json'
    if not cfg.is_file():
        return None
    t = json.loads(cfg.read_text()).get(name)
    if isinstance(t, dict):
        t = t.get('content')
    return tok.token_to_id(t) if t else None


def load_eos(tokenizer_dir: Path):
    """(tokenizers.Tokenizer, eos_id, vocab_size) from a local HF tokenizer folder."""
    from tokenizers import Tokenizer
    tokenizer_dir = Path(tokenizer_dir)
    tj = tokenizer_dir / 'tokenizer.json'
    if not tokenizer_dir.exists():
        raise UserError(f'tokenizer folder {tokenizer_dir} does not exist (no tokenizer.json to load); pass a '
                        'local Hugging Face tokenizer folder, e.g. one built with '
                        f'`python -m foundry_ext tokenizer --out {tokenizer_dir}` or saved with save_pretrained')
    if not tj.is_file():
        raise UserError(f'tokenizer folder {tokenizer_dir} has no tokenizer.json; build one with '
                        f'`python -m foundry_ext tokenizer --out {tokenizer_dir}`')
    tok = Tokenizer.from_file(str(tj))
    eos = special_token_id(tokenizer_dir, tok, 'eos_token')
    if eos is None:
        raise UserError(f'tokenizer {tokenizer_dir} defines no eos_token; documents cannot be separated. '
                        'Set eos_token in its tokenizer_config.json')
    return tok, eos, tok.get_vocab_size(with_added_tokens=True)
