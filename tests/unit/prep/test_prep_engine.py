"""The prep engine's seams: PrepConfig checks itself, a worker returns a typed ChunkResult."""
import json
import subprocess
import sys

import numpy as np
import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.pipeline import PrepConfig
from foundry_ext.prep.sources import Chunk
from foundry_ext.prep.worker import ChunkResult, WorkerConfig, init_worker, process_chunk


@pytest.mark.parametrize('kw,msg', [
    ({'concat_tokens': 1}, '--concat_tokens must be >= 2, got 1'),
    ({'num_proc': 0}, '--num_proc must be >= 1, got 0'),
    ({'tokenizer_impl': 'slow'}, "--tokenizer_impl must be auto, fast or hf, got 'slow'"),
    ({'encoding_errors': 'ignore'}, "--encoding_errors must be strict, replace or skip, got 'ignore'"),
    ({'near_dedup': 1.0}, '--near_dedup is a Jaccard threshold in (0, 1), got 1.0'),
    ({'minhash_perm': 1}, '--minhash_perm must be >= 2, got 1'),
    ({'compression': 'lz4'}, "--compression 'lz4' is not one MDS reads"),
    ({'hashes': ['md5x']}, 'md5x'),
])
def test_prep_config_checks_itself(tmp_path, kw, msg):
    with pytest.raises(UserError) as e:
        PrepConfig(tokenizer=tmp_path / 'tok', out=tmp_path / 'out', **kw)
    assert msg in str(e.value) and '\n' not in str(e.value)


def test_cli_bad_option_is_one_line_before_any_input_is_read(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'foundry_ext', 'prep', 'jsonl', '--input', str(tmp_path / 'none.jsonl'),
                        '--tokenizer', str(tmp_path / 'no_tok'), '--out', str(tmp_path / 'o'),
                        '--concat_tokens', '1'], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == 'error: --concat_tokens must be >= 2, got 1\n'
    assert not (tmp_path / 'o').exists()


def _worker_config(tiny_tokenizer, **kw):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tiny_tokenizer / 'tokenizer.json'))
    base = dict(tokenizer_json=tok.to_str(), eos=0, bos=None, dtype='uint16', text_field='text',
                domain_field='src', encoding_errors='strict', strict=False, quality=None,
                exact_dedup=True, near_dedup=None, minhash_perm=128, minhash_ngram=5, minhash_seed=1,
                max_piece_chars=1 << 16, tokenizer_impl='auto')
    base.update(kw)
    return WorkerConfig(**base), tok


def test_worker_returns_a_typed_chunk_result(tiny_tokenizer):
    cfg, tok = _worker_config(tiny_tokenizer)
    lines = [json.dumps({'text': 'alpha beta', 'src': 'web'}), 'not json',
             '{"text": "x", "n": ' + '1' * 5000 + '}',   # int too long for json: a bad record, not a crash
             json.dumps({'text': '   '}), json.dumps({'text': 'gamma delta'})]
    payload = ('\n'.join(lines) + '\n').encode()
    init_worker(cfg)
    r = process_chunk(Chunk('jsonl', 'a.jsonl', 'train', 'd', 1, payload, len(payload)))
    assert isinstance(r, ChunkResult)
    assert r.counters == {'read': 5, 'decode_replaced': 0, 'decode_skipped': 0, 'empty': 1, 'bad': 2}
    assert r.bad_examples[0].startswith('a.jsonl:2 is not a JSON object with a "text" field (not JSON:')
    assert r.bad_examples[1].startswith('a.jsonl:3 is not a JSON object') and 'digits' in r.bad_examples[1]
    assert r.domains == ['web', None] and r.names is None and r.name == 'a.jsonl'
    ids = [tok.encode(t, add_special_tokens=False).ids for t in ('alpha beta', 'gamma delta')]
    assert r.lens.tolist() == [len(ids[0]) + 1, len(ids[1]) + 1]
    assert r.tokens.tolist() == ids[0] + [0] + ids[1] + [0] and r.tokens.dtype == np.uint16
    assert r.last.tolist() == [True, True] and r.exact is not None and len(r.exact) == 2 and r.bands is None
    assert (r.source, r.split, r.domain, r.nbytes) == ('a.jsonl', 'train', 'd', len(payload))


def test_worker_strict_raises_the_one_line(tiny_tokenizer):
    cfg, _ = _worker_config(tiny_tokenizer, strict=True, exact_dedup=False)
    init_worker(cfg)
    with pytest.raises(UserError, match=r'^b\.jsonl:1 is not a JSON object with a "text" field \(missing\); fix'):
        process_chunk(Chunk('jsonl', 'b.jsonl', 'train', 'd', 1, b'{"txt": 1}\n'))
