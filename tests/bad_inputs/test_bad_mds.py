"""Damaged MDS datasets: one line at validation naming the dataset and the file, never a late traceback."""
import json
import shutil

import pytest
from bad_helpers import assert_one_line, only_problem, raises_one_line, run_cli

from conftest import ROOT, TINY_SEQ, TINY_VOCAB, tree_digest

YAML = ROOT / 'yamls' / 'pretrain' / 'tiny-cpu.yaml'
MIX = ROOT / 'yamls' / 'pretrain' / 'tiny-mix-cpu.yaml'


@pytest.fixture
def mds(tiny_mds, tmp_path):
    """A private copy of the tiny MDS root to damage."""
    out = tmp_path / 'mds'
    shutil.copytree(tiny_mds, out)
    return out


@pytest.fixture(scope='module')
def hashed_mds(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """Several small shards per domain, with xxh64 + sha1 hashes in the index."""
    from foundry_ext.prep.text import convert_to_mds
    out = tmp_path_factory.mktemp('hashed') / 'mds'
    convert_to_mds(tiny_corpus, tiny_tokenizer, out, concat_tokens=TINY_SEQ, shard_size=1 << 15,
                   hashes=['xxh64', 'sha1'], num_proc=1)
    return out


def cfg_for(yaml, root, tok):
    from foundry_ext.config.load import load
    return load(yaml, [f'variables.tokenizer_dir={tok}', f'variables.data_root={root}',
                       f'model.vocab_size={TINY_VOCAB}', f'variables.max_seq_len={TINY_SEQ}'])


def shard(root, domain='code', split='train', i=0):
    return root / domain / split / f'shard.{i:05d}.mds'


@pytest.mark.parametrize('yaml,where', [(YAML, "train_loader.dataset domain 'code'"), (MIX, 'train_loader.streams.code')])
def test_missing_shard(mds, tiny_tokenizer, yaml, where):
    shard(mds).unlink()
    only_problem(cfg_for(yaml, mds, tiny_tokenizer), where, f'shard {shard(mds)} is missing')


@pytest.mark.parametrize('yaml', [YAML, MIX])
def test_truncated_shard(mds, tiny_tokenizer, yaml):
    p = shard(mds, 'prose')
    size = p.stat().st_size
    with open(p, 'r+b') as f:
        f.truncate(size // 2)
    only_problem(cfg_for(yaml, mds, tiny_tokenizer), f'shard {p} is {size // 2} bytes but index.json says {size}',
                 'truncated')


def test_corrupt_index_json(mds, tiny_tokenizer):
    idx = mds / 'records' / 'train' / 'index.json'
    idx.write_text(idx.read_text()[:40])
    only_problem(cfg_for(YAML, mds, tiny_tokenizer), "domain 'records'", f'{idx} is not valid JSON')


def test_empty_index_json(mds, tiny_tokenizer):
    idx = mds / 'arithmetic' / 'train' / 'index.json'
    idx.write_text('')
    only_problem(cfg_for(YAML, mds, tiny_tokenizer), f'{idx} is empty')


def test_index_that_is_not_mds(mds):
    from foundry_ext.data.mds_check import check_mds
    (mds / 'code' / 'train' / 'index.json').write_text(json.dumps({'shards': [{'format': 'parquet'}], 'version': 2}))
    raises_one_line(lambda: check_mds(mds / 'code' / 'train', 'ds'), 'is not a valid MDS index',
                    "unknown format 'parquet'")


def test_index_naming_a_file_outside_the_folder(mds):
    from foundry_ext.data.mds_check import check_mds
    idx = mds / 'code' / 'train' / 'index.json'
    obj = json.loads(idx.read_text())
    obj['shards'][0]['raw_data']['basename'] = '../../../etc/passwd'
    idx.write_text(json.dumps(obj))
    raises_one_line(lambda: check_mds(idx.parent, 'ds'), 'names a file outside the dataset folder')


def test_hash_mismatch_same_size(hashed_mds, tmp_path):
    from foundry_ext.data.mds_check import check_mds
    root = tmp_path / 'h'
    shutil.copytree(hashed_mds / 'code', root)
    check_mds(root / 'train', 'code', hashes=True)       # intact: passes (and is remembered)
    p = shard(tmp_path, 'h', 'train', 1)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF                                       # same size, different bytes
    p.write_bytes(bytes(data))
    raises_one_line(lambda: check_mds(root / 'train', 'code', hashes=True), f'shard {p} does not match its xxh64 hash')


def test_zero_samples(mds):
    from foundry_ext.data.mds_check import check_mds
    idx = mds / 'code' / 'train' / 'index.json'
    obj = json.loads(idx.read_text())
    obj['shards'] = []
    idx.write_text(json.dumps(obj))
    raises_one_line(lambda: check_mds(idx.parent, 'train_loader.streams.code'), 'holds 0 samples')


def test_stale_local_cache_of_a_folder_remote(mds, tmp_path):
    """The local cache holds an older version of the dataset than its (folder) remote."""
    from foundry_ext.data.mds_check import check_stream
    cache = tmp_path / 'cache'
    shutil.copytree(mds / 'code', cache)
    idx = mds / 'code' / 'train' / 'index.json'
    idx.write_text(idx.read_text().replace('"samples": ', '"samples":  '))   # re-written remote index
    raises_one_line(lambda: check_stream(str(cache), str(mds / 'code'), 'train', 'train_loader.streams.code'),
                    'holds another version of the dataset than remote', 'delete the cache folder')


def test_llm_foundry_text_loader_local_data(mds):
    from foundry_ext.config.validate import _check_foundry_loader
    shard(mds, 'records').unlink()
    ps = []
    _check_foundry_loader({'name': 'text', 'dataset': {'local': str(mds / 'records'), 'split': 'train'}},
                          'train_loader', ps)
    assert len(ps) == 1 and ps[0].startswith('train_loader.dataset: shard') and 'is missing' in ps[0]


def test_finetuning_loader_with_folder_remote(mds, tmp_path):
    from foundry_ext.config.validate import _check_foundry_loader
    with open(shard(mds, 'prose'), 'r+b') as f:
        f.truncate(10)
    ps = []
    _check_foundry_loader({'name': 'finetuning', 'dataset': {'remote': str(mds / 'prose'), 'local': str(tmp_path / 'c'),
                                                            'split': 'train'}}, 'train_loader', ps)
    assert len(ps) == 1 and 'is 10 bytes but index.json says' in ps[0]


def test_train_cli_missing_shard_is_one_line_before_the_build(mds, tiny_tokenizer, tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'metrics.jsonl').write_text('{"step": 1}\n')
    before = tree_digest(run_dir)
    shard(mds, 'code').unlink()
    r = run_cli('train', YAML, f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data_root={mds}',
                f'model.vocab_size={TINY_VOCAB}', f'variables.max_seq_len={TINY_SEQ}', f'variables.run_dir={run_dir}')
    assert_one_line(r, 2, "train_loader.dataset domain 'code'", 'is missing')
    assert tree_digest(run_dir) == before
