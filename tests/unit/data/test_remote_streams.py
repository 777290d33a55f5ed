"""Remote streams: a local-folder remote and an S3-compatible server on this machine (moto).

The mixture loader downloads into its local cache, keeps it under cache_limit (LRU), reads the
same samples as from local data, and resumes exactly after a kill in the middle of a download;
corpus_text reads the same remote through LLM Foundry's text loader (streaming's own cache).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_SEQ, upload_folder

HERE = Path(__file__).parent
CREDS = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}


@pytest.fixture(scope='module')
def sharded_mds(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """Small shards (32 KiB) so a stream has several and cache_limit has something to evict."""
    from foundry_ext.prep.text import convert_to_mds
    out = tmp_path_factory.mktemp('sharded') / 'mds'
    convert_to_mds(tiny_corpus, tiny_tokenizer, out, concat_tokens=TINY_SEQ, shard_size=1 << 15, num_proc=1)
    return out


def mixture(streams, **extra):
    from foundry_ext.data.mixing.config import MixtureConfig
    from foundry_ext.validation import parse
    c = {'streams': streams, 'split': 'train', 'shuffle': {'preset': 'balanced', 'seed': 5},
         'schedule': {'unit': 'batches', 'total': 40,
                      'points': [{'at': 0, 'weights': {n: 1 / len(streams) for n in streams}}]}, **extra}
    return parse(MixtureConfig, c, 'train_loader'), c


def cache_bytes(folder):
    return sum(p.stat().st_size for p in Path(folder).rglob('*.mds'))


def batches(ds, n):
    it = iter(ds.sampler)
    return [ds.__getitems__(next(it))['input_ids'] for _ in range(n)]


def test_folder_remote_with_cache_limit_reads_the_same_samples(sharded_mds, tmp_path):
    from foundry_ext.data.mixing.config import check_data
    from foundry_ext.data.mixing.loader import build_mixture
    names = ('code', 'prose')
    local, _ = mixture({n: {'local': str(sharded_mds / n)} for n in names})
    limit = 4 * (1 << 15)
    remote, _ = mixture({n: {'local': str(tmp_path / 'cache' / n), 'remote': str(sharded_mds / n)} for n in names},
                        cache_limit=limit)
    check_data(remote)
    a, b = build_mixture(local, 4, 0, 1), build_mixture(remote, 4, 0, 1)
    peak = 0
    it_a, it_b = iter(a.sampler), iter(b.sampler)
    for _ in range(30):
        ka, kb = next(it_a), next(it_b)
        assert ka == kb
        assert (a.__getitems__(ka)['input_ids'] == b.__getitems__(kb)['input_ids']).all()
        peak = max(peak, cache_bytes(tmp_path / 'cache'))
    total = sum(cache_bytes(sharded_mds / n / 'train') for n in names)
    assert 0 < peak <= limit < total       # it had to evict, and never went over


def test_s3_remote_mixture(s3_server, sharded_mds, tmp_path, monkeypatch):
    from foundry_ext.data.mixing.config import check_data
    from foundry_ext.data.mixing.loader import build_mixture
    for k, v in {**CREDS, 'S3_ENDPOINT_URL': s3_server}.items():
        monkeypatch.setenv(k, v)
    url = upload_folder(s3_server, sharded_mds, 'mixture', 'mds')
    names = ('code', 'records')
    local, _ = mixture({n: {'local': str(sharded_mds / n)} for n in names})
    remote, _ = mixture({n: {'local': str(tmp_path / 'c' / n), 'remote': f'{url}/{n}'} for n in names},
                        cache_limit='200kb')
    check_data(remote)
    assert all((tmp_path / 'c' / n / 'train' / 'index.json').is_file() for n in names)
    for x, y in zip(batches(build_mixture(local, 4, 0, 1), 25), batches(build_mixture(remote, 4, 0, 1), 25)):
        assert (x == y).all()
    assert 0 < cache_bytes(tmp_path / 'c') <= 200_000


@pytest.mark.slow
def test_resume_exactly_after_a_kill_mid_download(s3_server, sharded_mds, tmp_path, monkeypatch):
    import remote_worker
    for k, v in {**CREDS, 'S3_ENDPOINT_URL': s3_server}.items():
        monkeypatch.setenv(k, v)
    url = upload_folder(s3_server, sharded_mds, 'killed', 'mds')
    for name in ('cache', 'cache_ref'):
        _, c = mixture({n: {'local': str(tmp_path / name / n), 'remote': f'{url}/{n}'} for n in ('code', 'prose')})
        (tmp_path / f'{name}.json').write_text(json.dumps(c))
    ref, run = tmp_path / 'ref', tmp_path / 'run'
    ref.mkdir()
    run.mkdir()
    remote_worker.main(str(tmp_path / 'cache_ref.json'), str(ref), 20, kill_at=0)     # uninterrupted, own cache
    r = subprocess.run([sys.executable, str(HERE / 'remote_worker.py'), str(tmp_path / 'cache.json'), str(run), '20'],
                       cwd=ROOT, env={**os.environ, 'KILL_AT_DOWNLOAD': '4'}, timeout=300)
    assert r.returncode == -9                                  # killed half-way through a shard download
    assert list((tmp_path / 'cache').rglob('*.5f3a9c1e'))       # the partial download is there ...
    remote_worker.main(str(tmp_path / 'cache.json'), str(run), 20, kill_at=0)          # the re-run resumes

    def read(folder):
        rows = {}
        for f in sorted(folder.glob('batches-*.jsonl'), key=os.path.getmtime):
            for line in f.read_text().splitlines():
                rows[json.loads(line)['batch']] = json.loads(line)['digest']   # the resumed run wins
        return rows
    want, got = read(ref), read(run)
    assert sorted(want) == list(range(20)) and got == want     # ... and every batch is the uninterrupted one


@pytest.mark.slow
def test_corpus_text_reads_an_s3_remote(s3_server, tiny_tokenizer, sharded_mds, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from foundry_ext.data.corpus_text import CorpusTextConfig, build_corpus_dataloader, check_data
    from foundry_ext.validation import in_section, parse
    for k, v in {**CREDS, 'S3_ENDPOINT_URL': s3_server}.items():
        monkeypatch.setenv(k, v)
    url = upload_folder(s3_server, sharded_mds, 'corpus', 'mds')
    loader = {'num_workers': 0, 'dataset': {'root': str(tmp_path / 'cache'), 'remote': url, 'split': 'train',
                                            'domains': ['code', 'records'], 'max_seq_len': TINY_SEQ,
                                            'cache_limit': '300kb', 'shuffle': False}}
    with in_section('train_loader'):
        check_data(parse(CorpusTextConfig, loader, 'train_loader'))
    spec = build_corpus_dataloader(AutoTokenizer.from_pretrained(str(tiny_tokenizer)), 4, **loader)
    it = iter(spec.dataloader)
    for _ in range(5):
        assert next(it)['input_ids'].shape == (4, TINY_SEQ)
    assert 0 < cache_bytes(tmp_path / 'cache') <= 300_000
