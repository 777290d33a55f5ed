"""Shared tiny data: a ~0.5 MB corpus, a 512-token tokenizer and 64-token MDS, built once."""
import hashlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

TINY_VOCAB = 512
TINY_SEQ = 64


@pytest.fixture(scope='session')
def tiny_corpus(tmp_path_factory):
    from foundry_ext.data.corpus import build_corpus
    out = tmp_path_factory.mktemp('data') / 'corpus'
    build_corpus(out, size_mb=0.6, seed=3, val_fraction=0.1)
    return out


@pytest.fixture(scope='session')
def tiny_tokenizer(tiny_corpus):
    from foundry_ext.data.corpus import iter_texts
    from foundry_ext.data.tokenizer import train_tokenizer
    out = tiny_corpus.parent / 'tokenizer'
    train_tokenizer(iter_texts(tiny_corpus), out, vocab_size=TINY_VOCAB)
    return out


@pytest.fixture(scope='session')
def tiny_mds(tiny_corpus, tiny_tokenizer):
    from foundry_ext.data.mds import convert_to_mds
    out = tiny_corpus.parent / 'mds'
    convert_to_mds(tiny_corpus, tiny_tokenizer, out, concat_tokens=TINY_SEQ)
    return out


def tree_digest(folder) -> str:
    """sha256 over every file's relative path and bytes: equal digests = byte-identical trees."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob('*')):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()
