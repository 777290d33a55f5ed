"""Shared tiny data: a ~0.5 MB corpus, a 512-token tokenizer and 64-token MDS, built once."""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# subprocesses (scripts/train.py, torchrun workers) import this checkout's foundry_ext, not another install
os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'offline')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# The image sets PYTHONDONTWRITEBYTECODE=1, so each test subprocess (~40 train/torchrun processes) recompiled
# torch/composer/llmfoundry (import llmfoundry ~48 s instead of ~20 s here). As under `make test` (the Makefile
# unexports it), this session and its subprocesses cache bytecode, also when pytest is run directly.
os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
sys.dont_write_bytecode = False

TINY_VOCAB = 512
TINY_SEQ = 64


@pytest.fixture(scope='session')
def tiny_corpus(tmp_path_factory):
    from foundry_ext.prep.corpus import build_corpus
    out = tmp_path_factory.mktemp('data') / 'corpus'
    build_corpus(out, size_mb=0.6, seed=3, val_fraction=0.1)
    return out


@pytest.fixture(scope='session')
def tiny_tokenizer(tiny_corpus):
    from foundry_ext.prep.corpus import iter_texts
    from foundry_ext.prep.tokenizer import train_tokenizer
    out = tiny_corpus.parent / 'tokenizer'
    train_tokenizer(iter_texts(tiny_corpus), out, vocab_size=TINY_VOCAB)
    return out


@pytest.fixture(scope='session')
def tiny_mds(tiny_corpus, tiny_tokenizer):
    from foundry_ext.prep.text import convert_to_mds
    out = tiny_corpus.parent / 'mds'
    convert_to_mds(tiny_corpus, tiny_tokenizer, out, concat_tokens=TINY_SEQ)
    return out


def run_cli(*args) -> subprocess.CompletedProcess:
    """`python -m foundry_ext <args>` in this process, as a CompletedProcess (returncode, stdout, stderr):
    no subprocess start-up (~20 s of imports here). Only for verbs that neither train nor handle signals
    (report, export, sft-data, sft-eval, eval); training and multi-process runs stay subprocesses."""
    import contextlib
    import io

    from foundry_ext.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:          # argparse usage errors exit instead of returning
            rc = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def tree_digest(folder) -> str:
    """sha256 over every file's relative path and bytes: equal digests = byte-identical trees."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob('*')):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


WORDS = 'alpha beta gamma delta river stone cloud apple seven nine code data tree light'.split()


def write_jsonl(path, rows) -> str:
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return str(path)


def icl_files(d: Path) -> dict:
    """Small LLM Foundry-format ICL task files (mc, schema, lm, gen) of random words, seeded."""
    rng = random.Random(0)
    s = lambda k: ' '.join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    mc = [{'query': s(6) + '?', 'choices': [s(2), s(3), s(1)], 'gold': rng.randrange(3)} for _ in range(24)]
    schema = [{'context_options': [s(4) + ' ' + w for w in ('he', 'she')], 'continuation': s(3),
               'gold': rng.randrange(2)} for _ in range(20)]
    lm = [{'context': s(8), 'continuation': s(1 + i % 3)} for i in range(30)]
    gen = [{'context': s(5), 'answer': s(1), 'aliases': [s(1)]} for _ in range(10)]
    return {'mc': write_jsonl(d / 'mc.jsonl', mc), 'schema': write_jsonl(d / 'schema.jsonl', schema),
            'lm': write_jsonl(d / 'lm.jsonl', lm), 'gen': write_jsonl(d / 'gen.jsonl', gen), 'dir': d}


@pytest.fixture(scope='session')
def s3_server():
    """An S3-compatible server on this machine (moto's server mode, 127.0.0.1, a free port).
    Yields its endpoint URL; tests set S3_ENDPOINT_URL and fake credentials themselves."""
    import logging
    moto_server = pytest.importorskip('moto.server')
    logging.getLogger('werkzeug').setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f'http://{host}:{port}'
    server.stop()


def upload_folder(endpoint: str, folder, bucket: str, prefix: str) -> str:
    """Copy a local folder into ``s3://bucket/prefix`` on the test server; returns that URL."""
    import boto3
    c = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing',
                     region_name='us-east-1')
    try:
        c.create_bucket(Bucket=bucket)
    except c.exceptions.BucketAlreadyOwnedByYou:
        pass
    folder = Path(folder)
    for p in sorted(folder.rglob('*')):
        if p.is_file():
            c.upload_file(str(p), bucket, f'{prefix}/{p.relative_to(folder).as_posix()}')
    return f's3://{bucket}/{prefix}'
