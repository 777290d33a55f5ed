"""Remote MDS streams that cannot be read: one line at validation (unreachable, credentials, wrong path)."""
import socket

import pytest
from bad_helpers import raises_one_line

from conftest import upload_folder

CREDS = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_DEFAULT_REGION': 'us-east-1'}


@pytest.fixture
def s3(s3_server, tiny_mds, monkeypatch):
    for k, v in {**CREDS, 'S3_ENDPOINT_URL': s3_server}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('AWS_PROFILE', raising=False)
    return upload_folder(s3_server, tiny_mds / 'code', 'badremote', 'code')


def _check(remote, local):
    from foundry_ext.data.mds_check import check_stream
    return check_stream(str(local), remote, 'train', 'train_loader.streams.code')


def test_s3_stream_validates(s3, tmp_path):
    idx = _check(s3, tmp_path / 'cache')
    assert idx.total_samples > 0 and (tmp_path / 'cache' / 'train' / 'index.json').is_file()


def test_unreachable_endpoint(s3, tmp_path, monkeypatch):
    with socket.socket() as s:          # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('S3_ENDPOINT_URL', f'http://127.0.0.1:{port}')
    raises_one_line(lambda: _check(s3, tmp_path / 'c'), f'cannot reach the S3 endpoint http://127.0.0.1:{port}')
    assert not (tmp_path / 'c' / 'train' / 'index.json').exists()


def test_missing_credentials(s3, tmp_path, monkeypatch):
    for k in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'):
        monkeypatch.delenv(k)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path / 'none'))
    raises_one_line(lambda: _check(s3, tmp_path / 'c'), 'access to s3://badremote/code/train/index.json denied',
                    'no credentials are set', 'AWS_ACCESS_KEY_ID')


def test_wrong_remote_path(s3, tmp_path):
    raises_one_line(lambda: _check(s3 + '-typo', tmp_path / 'c'), 's3://badremote/code-typo/train/index.json does not exist')


def test_missing_folder_remote(tmp_path):
    raises_one_line(lambda: _check(str(tmp_path / 'nowhere'), tmp_path / 'c'), 'does not exist')


def test_corpus_text_url_remote_needs_domains(tmp_path):
    from foundry_ext.config.validate import check_owned
    ps = []
    check_owned('loader', 'corpus_text', {'dataset': {'root': str(tmp_path), 'remote': 's3://b/mds'}}, 'train_loader', ps)
    assert ps == ['train_loader.dataset.domains is required with a remote that is not a local folder (s3://b/mds); '
                  'list the domains to read, e.g. [code, prose]']


def test_cache_limit_smaller_than_two_shards(tiny_mds, tmp_path):
    from foundry_ext.data.mixing.cache import ShardCache
    from foundry_ext.data.mixing.config import MixtureConfig
    from foundry_ext.validation import parse
    cfg = parse(MixtureConfig, {'streams': {'code': {'local': str(tmp_path / 'c'), 'remote': str(tiny_mds / 'code')}},
                                'split': 'train', 'cache_limit': '1kb',
                                'schedule': {'unit': 'batches', 'total': 10, 'points': [{'at': 0, 'weights': {'code': 1}}]}},
                'train_loader')
    assert cfg.cache_bytes == 1000

    class Shard:  # the two attributes ShardCache reads
        file_pairs = [(type('F', (), {'basename': 's.mds', 'bytes': 4000})(), None)]
    raises_one_line(lambda: ShardCache(cfg.cache_bytes).add(str(tmp_path), [Shard()]),
                    'must hold at least two of the largest shard')
    raises_one_line(lambda: parse(MixtureConfig, {'streams': {'a': {'local': 'x'}}, 'cache_limit': 'lots',
                                                 'schedule': {'unit': 'batches', 'total': 1,
                                                              'points': [{'at': 0, 'weights': {'a': 1}}]}},
                                  'train_loader'), "cache_limit 'lots' is not a size")
