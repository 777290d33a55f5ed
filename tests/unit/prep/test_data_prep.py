"""data_prep engine: byte compatibility, exact fast tokenization, determinism, robustness."""
import gzip
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.pipeline import PrepConfig, run
from foundry_ext.prep.sources import Source
from foundry_ext.prep.text import convert_to_mds

from conftest import ROOT, TINY_SEQ, tree_digest


def _rows(folder):
    from streaming import StreamingDataset
    ds = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    return np.stack([ds[i]['tokens'] for i in range(ds.num_samples)])


def _jsonl(path, records, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text('\n'.join(lines) + '\n')
    return path


def _prose(i, n_words=120):
    rng = np.random.default_rng(i)
    words = ['the', 'river', 'of', 'time', 'and', 'that', 'with', 'have', 'garden', 'quiet', 'morning',
             'light', 'falls', 'over', 'stone', 'walls', 'where', 'children', 'play', 'to', 'be', 'music']
    return ' '.join(rng.choice(words, n_words)) + '.'


def _run(tmp_path, sources, tok, name='out', **kw):
    cfg = PrepConfig(tokenizer=tok, out=tmp_path / name, concat_tokens=kw.pop('concat_tokens', 16), **kw)
    return run(sources, cfg)


# ------------------------------------------------------------------ MDS writer


@pytest.mark.parametrize('dtype,L,compression,hashes,limit', [
    (np.uint16, 64, None, None, 1 << 26),
    (np.uint32, 300, 'zstd', ['sha1', 'xxh64'], 20000),
    (np.uint16, 7, 'zstd:5', None, 1 << 12),
])
def test_fast_writer_is_byte_identical_to_mdswriter(tmp_path, dtype, L, compression, hashes, limit):
    from streaming import MDSWriter

    from foundry_ext.prep.mds_writer import TokenMDSWriter
    rows = np.random.default_rng(0).integers(0, 60000, (700, L)).astype(dtype)
    with MDSWriter(out=str(tmp_path / 'a'), columns={'tokens': f'ndarray:{np.dtype(dtype).name}'},
                   compression=compression, hashes=hashes, size_limit=limit) as w:
        for r in rows:
            w.write({'tokens': r})
    w = TokenMDSWriter(tmp_path / 'b', dtype, L, compression, hashes, limit)
    w.write_rows(rows[:123])
    w.write_rows(rows[123:])
    w.finish()
    a = sorted(p.name for p in (tmp_path / 'a').iterdir())
    assert a == sorted(p.name for p in (tmp_path / 'b').iterdir()) and len(a) >= 2
    for name in a:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
    np.testing.assert_array_equal(_rows(tmp_path / 'b'), rows)


def test_token_dtype_by_vocab():
    from foundry_ext.prep.mds_writer import token_dtype
    assert token_dtype(4096) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(128256) == np.uint32


# ------------------------------------------------------------------ exact fast tokenizer

ADVERSARIAL = [
    "Don't stop: it's 12,345.67 — we'll see, they've I'm you'd", 'caf\u00e9 na\u0308ive \u00c5ngstr\u00f6m',
    'Gr\u00fc\u00dfe, \u6771\u4eac\u90fd \u3053\u3093\u306b\u3061\u306f \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629',
    'emoji \U0001F642\U0001F680 flags \U0001F1EB\U0001F1F7 zwj \U0001F468\u200d\U0001F469\u200d\U0001F467',
    'x\u00b2 + y\u00b3 = \u00bd \u2167 \u0661\u0662\u0663 \u0967', 'tabs\t\tand   spaces \n\n  \r\n end  ',
    'sep\x1cchars\x1d\x1e\x1f here', 'nbsp\u00a0thin\u2009ideo\u3000line\u2028para\u2029',
    'under_score __init__ a_b', 'special <|endoftext|> inside', '    ', '\n', 'a', "'s'S 'LL ''",
    'def f(x):\n\treturn x ** 2  # comment\n', 'unassigned \U000E0080 \u0378 private \ue000',
]


def test_fast_tokenizer_gives_tokenizers_ids(tiny_corpus, tiny_tokenizer):
    from tokenizers import Tokenizer

    from foundry_ext.prep.corpus import iter_texts
    from foundry_ext.prep.fasttok import make_encoder
    tok = Tokenizer.from_file(str(tiny_tokenizer / 'tokenizer.json'))
    enc, name = make_encoder(tok, np.uint32)
    assert name == 'fast-bytelevel-bpe'
    texts = list(iter_texts(tiny_corpus, 'train'))[:400] + ADVERSARIAL
    ours = enc(texts)
    ref = tok.encode_batch(texts, add_special_tokens=False)
    for t, a, b in zip(texts, ours, ref):
        assert a.tolist() == b.ids, t[:80]
    assert enc.__self__.fallback_docs >= 3  # '<|endoftext|>', '\x1c', '²' go through encode_batch


def test_fast_tokenizer_with_prefix_space(tmp_path, tiny_tokenizer):
    from tokenizers import Tokenizer

    from foundry_ext.prep.fasttok import make_encoder
    spec = json.loads((tiny_tokenizer / 'tokenizer.json').read_text())
    spec['pre_tokenizer']['add_prefix_space'] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    enc, name = make_encoder(tok, np.uint32)
    assert name == 'fast-bytelevel-bpe'
    for t, a, b in zip(ADVERSARIAL, enc(ADVERSARIAL), tok.encode_batch(ADVERSARIAL, add_special_tokens=False)):
        assert a.tolist() == b.ids, t
    spec['normalizer'] = {'type': 'Lowercase'}
    assert make_encoder(Tokenizer.from_str(json.dumps(spec)), np.uint32)[1] == 'tokenizers'


def test_output_same_for_fast_and_hf_tokenizer_paths(tmp_path, tiny_corpus, tiny_tokenizer):
    a = convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'fast', concat_tokens=TINY_SEQ)
    b = convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'hf', concat_tokens=TINY_SEQ, tokenizer_impl='hf')
    assert a == b and tree_digest(tmp_path / 'fast') == tree_digest(tmp_path / 'hf')


# ------------------------------------------------------------------ determinism, parallelism


def test_byte_identical_for_any_num_proc_with_curation(tmp_path, tiny_corpus, tiny_tokenizer, tiny_mds):
    kw = dict(concat_tokens=TINY_SEQ, exact_dedup=True, near_dedup=0.7, block_bytes=1 << 15)
    convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'p1', num_proc=1, **kw)
    convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'p2', num_proc=2, **kw)
    convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'p2b', num_proc=2, **kw)
    assert tree_digest(tmp_path / 'p1') == tree_digest(tmp_path / 'p2') == tree_digest(tmp_path / 'p2b')
    # without curation, parallel output equals the fixture's single-process one
    convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'plain', concat_tokens=TINY_SEQ, num_proc=2,
                   block_bytes=1 << 14)
    assert tree_digest(tmp_path / 'plain') == tree_digest(tiny_mds)


# ------------------------------------------------------------------ robustness


def test_existing_output_refused_then_overwritten(tmp_path, tiny_corpus, tiny_tokenizer):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('x')
    with pytest.raises(UserError, match='already exists; pass --overwrite'):
        convert_to_mds(tiny_corpus, tiny_tokenizer, out)
    assert (out / 'keep.txt').is_file()
    convert_to_mds(tiny_corpus, tiny_tokenizer, out, overwrite=True)
    assert not (out / 'keep.txt').exists() and (out / 'stats.json').is_file()
    assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_failure_leaves_nothing_and_stale_temp_is_cleaned(tmp_path, tiny_tokenizer):
    src = tmp_path / 'in'
    _jsonl(src / 'd' / 'train.jsonl', [{'text': _prose(i)} for i in range(30)], ['{"oops": 1}'])
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.out.tmp-{dead.pid}'
    (stale / 'd' / 'train').mkdir(parents=True)
    (stale / 'd' / 'train' / 'shard.00000.mds').write_bytes(b'half')
    with pytest.raises(UserError, match=r'train\.jsonl:31 is not a JSON object with a "text" field'):
        convert_to_mds(src, tiny_tokenizer, tmp_path / 'out', concat_tokens=16, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']  # stale temp removed, nothing written
    s = convert_to_mds(src, tiny_tokenizer, tmp_path / 'out', concat_tokens=16)
    assert s['curation']['steps'][0] == {'step': 'bad_records', 'dropped': 1, 'kept': 30}
    assert 'train.jsonl:31' in s['curation']['bad_record_examples'][0]


def test_killed_run_rerun_gives_same_bytes(tmp_path, tiny_tokenizer):
    src = tmp_path / 'in'
    _jsonl(src / 'd' / 'train.jsonl', [{'text': _prose(i, 400)} for i in range(3000)])
    cmd = [sys.executable, str(ROOT / 'data_prep' / 'convert_text_to_mds.py'), '--input', str(src),
           '--tokenizer', str(tiny_tokenizer), '--concat_tokens', '32', '--num_proc', '1', '--tokenizer_impl', 'hf']
    proc = subprocess.Popen(cmd + ['--out', str(tmp_path / 'out')], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob('.out.tmp-*/d/train')):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL:  # killed mid-run: no output, a stale temp folder
        assert not (tmp_path / 'out').exists()
    assert subprocess.run(cmd + ['--out', str(tmp_path / 'out'), '--overwrite'], capture_output=True).returncode == 0
    assert subprocess.run(cmd + ['--out', str(tmp_path / 'ref')], capture_output=True).returncode == 0
    assert tree_digest(tmp_path / 'out') == tree_digest(tmp_path / 'ref')
    assert not list(tmp_path.glob('.out.*'))


def test_bad_jsonl_lines_skipped_with_line_numbers_or_strict(tmp_path, tiny_tokenizer):
    f = _jsonl(tmp_path / 'a.jsonl', [{'text': _prose(i)} for i in range(5)],
               ['not json', '[1, 2]', '{"txt": "wrong field"}', '{"text": null}', '', '{"text": "ok again"}'])
    src = [Source('jsonl', 'train', 'd', [f])]
    s = _run(tmp_path, src, tiny_tokenizer)
    cur = s['curation']
    assert cur['read'] == 10 and cur['steps'][0]['dropped'] == 4 and cur['kept'] == 6
    ex = cur['bad_record_examples']
    assert [e.split(' ')[0].rsplit(':', 1)[1] for e in ex] == ['6', '7', '8', '9']
    assert 'not JSON' in ex[0] and 'a JSON list' in ex[1] and 'missing' in ex[2] and 'NoneType' in ex[3]
    with pytest.raises(UserError, match=r'a\.jsonl:6 is not a JSON object.*--strict'):
        _run(tmp_path, src, tiny_tokenizer, name='o2', strict=True)


def test_non_utf8_replace_skip_strict_counted(tmp_path, tiny_tokenizer):
    f = tmp_path / 'a.jsonl'
    good = [json.dumps({'text': _prose(i)}).encode() for i in range(4)]
    f.write_bytes(b'\n'.join(good[:2] + [b'{"text": "caf\xe9 latin-1"}'] + good[2:]) + b'\n')
    src = [Source('jsonl', 'train', 'd', [f])]
    with pytest.raises(UserError, match=r'a\.jsonl:3 is not valid UTF-8.*--encoding_errors'):
        _run(tmp_path, src, tiny_tokenizer)
    s = _run(tmp_path, src, tiny_tokenizer, name='r', encoding_errors='replace')
    assert s['decode']['replaced_docs'] == 1 and s['domains']['d']['train']['docs'] == 5
    s = _run(tmp_path, src, tiny_tokenizer, name='s', encoding_errors='skip')
    assert s['decode']['skipped_docs'] == 1 and s['domains']['d']['train']['docs'] == 4
    assert s['curation']['steps'][1] == {'step': 'non_utf8_skipped', 'dropped': 1, 'kept': 4}


def test_empty_input_is_a_clear_error(tmp_path, tiny_tokenizer):
    (tmp_path / 'e.jsonl').write_text('\n\n')
    with pytest.raises(UserError, match='no documents to convert: the input is empty'):
        _run(tmp_path, [Source('jsonl', 'train', 'd', [tmp_path / 'e.jsonl'])], tiny_tokenizer)
    _jsonl(tmp_path / 'f.jsonl', [{'text': 'short'}])
    with pytest.raises(UserError, match=r'all 1 input records were dropped \(quality:min_words: 1\)'):
        from foundry_ext.prep.quality import QualityConfig
        _run(tmp_path, [Source('jsonl', 'train', 'd', [tmp_path / 'f.jsonl'])], tiny_tokenizer,
             quality=QualityConfig(min_words=5))
    assert not (tmp_path / 'out').exists()


def test_cli_missing_tokenizer_and_empty_input_one_line_exit_2(tmp_path):
    (tmp_path / 'e.jsonl').write_text('')
    script = str(ROOT / 'data_prep' / 'convert_jsonl_to_mds.py')
    r = subprocess.run([sys.executable, script, '--input', str(tmp_path / 'e.jsonl'), '--tokenizer',
                        str(tmp_path / 'no_tok'), '--out', str(tmp_path / 'o')], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count('\n') == 1
    assert r.stderr.startswith(f'error: tokenizer folder {tmp_path / "no_tok"} does not exist')
    r = subprocess.run([sys.executable, script, '--input', str(tmp_path / 'nothing*.jsonl'), '--tokenizer',
                        str(tmp_path), '--out', str(tmp_path / 'o')], capture_output=True, text=True)
    assert r.returncode == 2 and 'matches no file' in r.stderr


def test_one_enormous_document_streams_in_pieces_with_the_same_tokens(tmp_path, tiny_tokenizer):
    body = ' '.join(_prose(i, 300) for i in range(400))  # ~600 KB, one document
    d = tmp_path / 'in' / 'big'
    d.mkdir(parents=True)
    (d / 'huge.txt').write_text(body)
    src = lambda: [Source('text', 'train', 'big', [d / 'huge.txt'])]  # noqa: E731
    whole = _run(tmp_path, src(), tiny_tokenizer, name='whole', max_doc_bytes=1 << 24)
    pieces = _run(tmp_path, src(), tiny_tokenizer, name='pieces', max_doc_bytes=50_000, block_bytes=20_000)
    assert whole['domains']['big']['train']['docs'] == pieces['domains']['big']['train']['docs'] == 1
    assert whole['curation']['read'] == 1 and pieces['curation']['read'] > 10  # streamed
    assert tree_digest(tmp_path / 'whole' / 'big') == tree_digest(tmp_path / 'pieces' / 'big')  # shards + counts
    # and as one enormous jsonl line: same tokens as one encode of the whole text
    _jsonl(tmp_path / 'j.jsonl', [{'text': body}])
    _run(tmp_path, [Source('jsonl', 'train', 'big', [tmp_path / 'j.jsonl'])], tiny_tokenizer, name='jl')
    np.testing.assert_array_equal(_rows(tmp_path / 'jl' / 'big' / 'train'), _rows(tmp_path / 'whole' / 'big' / 'train'))


def test_compressed_inputs_and_domain_field(tmp_path, tiny_tokenizer):
    recs = [{'text': _prose(i), 'src': ['web', 'books', 'web'][i % 3]} for i in range(30)] + [{'text': _prose(99)}]
    raw = ('\n'.join(json.dumps(r) for r in recs) + '\n').encode()
    (tmp_path / 'a.jsonl.gz').write_bytes(gzip.compress(raw))
    subprocess.run(['zstd', '-q', '-o', str(tmp_path / 'b.jsonl.zst'), '-'], input=raw, check=True)
    for name in ('a.jsonl.gz', 'b.jsonl.zst'):
        s = _run(tmp_path, [Source('jsonl', 'train', 'other', [tmp_path / name])], tiny_tokenizer,
                 name=f'out_{name}', domain_field='src')
        assert sorted(s['domains']) == ['books', 'other', 'web']
        assert [s['domains'][d]['train']['docs'] for d in ('books', 'other', 'web')] == [10, 1, 20]
        assert (tmp_path / f'out_{name}' / 'web' / 'train' / 'index.json').is_file()


def test_parquet_input(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = [_prose(i) for i in range(50)] + [None]
    pq.write_table(pa.table({'content': texts, 'lang': ['en', 'fr'] * 25 + ['en']}), tmp_path / 'x.parquet',
                   row_group_size=7)
    s = _run(tmp_path, [Source('parquet', 'val', 'p', [tmp_path / 'x.parquet'])], tiny_tokenizer,
             text_field='content', domain_field='lang')
    assert s['domains']['en']['val']['docs'] == 25 and s['domains']['fr']['val']['docs'] == 25
    assert 'x.parquet row 50 has no string "content"' in s['curation']['bad_record_examples'][0]
    with pytest.raises(UserError, match="has no column 'text'"):
        _run(tmp_path, [Source('parquet', 'val', 'p', [tmp_path / 'x.parquet'])], tiny_tokenizer, name='o2')


def test_hf_dataset_from_disk(tmp_path, tiny_tokenizer):
    import datasets

    from foundry_ext.prep.sources import hf_sources
    dd = datasets.DatasetDict({'train': datasets.Dataset.from_dict({'text': [_prose(i) for i in range(40)]}),
                               'validation': datasets.Dataset.from_dict({'text': [_prose(i) for i in range(50, 60)]})})
    dd.save_to_disk(str(tmp_path / 'ds'))
    s = _run(tmp_path, hf_sources(str(tmp_path / 'ds'), None, 'text', 'ds'), tiny_tokenizer)
    assert s['domains']['ds']['train']['docs'] == 40 and s['domains']['ds']['validation']['docs'] == 10
    streamed = _run(tmp_path, hf_sources(str(tmp_path / 'ds'), 'train', 'text', 'ds'), tiny_tokenizer, name='o2')
    assert streamed['domains']['ds'] == {'train': s['domains']['ds']['train']}
    # the same records from a jsonl file give the same MDS bytes
    _jsonl(tmp_path / 'j' / 'ds' / 'train.jsonl', [{'text': _prose(i)} for i in range(40)])
    _run(tmp_path, [Source('jsonl', 'train', 'ds', [tmp_path / 'j' / 'ds' / 'train.jsonl'])], tiny_tokenizer, name='o3')
    assert tree_digest(tmp_path / 'o2' / 'ds') == tree_digest(tmp_path / 'o3' / 'ds')
    with pytest.raises(UserError, match='hub is offline'):
        hf_sources('someone/some-dataset', None, 'text', 'x')


# ------------------------------------------------------------------ packing options


def test_bos_and_no_wrap(tmp_path, tiny_tokenizer):
    docs = [_prose(i, n) for i, n in enumerate([3, 40, 5, 8, 60, 2])]
    f = _jsonl(tmp_path / 'a.jsonl', [{'text': t} for t in docs])
    s = _run(tmp_path, [Source('jsonl', 'train', 'd', [f])], tiny_tokenizer, bos=True, no_wrap=True)
    rows = _rows(tmp_path / 'out' / 'd' / 'train')
    bos = s['bos_token_id']
    assert bos is not None and all(r[0] == bos for r in rows)  # every sample starts at a document
    assert s['domains']['d']['train']['truncated_tokens'] > 0
    wrap = _run(tmp_path, [Source('jsonl', 'train', 'd', [f])], tiny_tokenizer, name='w', bos=True)
    assert wrap['domains']['d']['train']['samples'] > s['domains']['d']['train']['samples']


def test_llmfoundry_text_loader_reads_compressed_output(tmp_path, tiny_tokenizer):
    from llmfoundry.data.text_data import StreamingTextDataset
    from transformers import AutoTokenizer
    f = _jsonl(tmp_path / 'a.jsonl', [{'text': _prose(i)} for i in range(20)])
    _run(tmp_path, [Source('jsonl', 'train', 'd', [f])], tiny_tokenizer, compression='zstd', hashes=['sha1'])
    ds = StreamingTextDataset(tokenizer=AutoTokenizer.from_pretrained(str(tiny_tokenizer)), max_seq_len=16,
                              local=str(tmp_path / 'out' / 'd'), split='train', batch_size=2)
    assert ds[0].shape == (16,)


# ------------------------------------------------------------------ curation


def test_exact_and_near_dedup_keep_the_first(tmp_path, tiny_tokenizer):
    base = [_prose(i, 200) for i in range(20)]
    near = base[3].split(' ')
    near[100] = 'ZEBRA'
    recs = base + ['  ' + base[0].upper() + '  ', base[5], ' '.join(near), _prose(777, 200)]
    f = _jsonl(tmp_path / 'a.jsonl', [{'text': t} for t in recs])
    s = _run(tmp_path, [Source('jsonl', 'train', 'd', [f])], tiny_tokenizer, exact_dedup=True, near_dedup=0.8)
    steps = {r['step']: r['dropped'] for r in s['curation']['steps']}
    assert steps['exact_dedup'] == 2 and steps['near_dedup'] == 1 and s['curation']['kept'] == 21
    assert s['domains']['d']['train']['docs'] == 21
    s = _run(tmp_path, [Source('jsonl', 'train', 'd', [f])], tiny_tokenizer, name='o2', exact_dedup=True)
    assert s['curation']['kept'] == 22


def test_minhash_estimates_jaccard():
    from foundry_ext.prep.dedup import MinHasher, optimal_bands
    b, r = optimal_bands(0.8, 128)
    assert b * r <= 128 and 0.6 < (1 / b) ** (1 / r) < 0.9
    mh = MinHasher(num_perm=256, threshold=0.8, ngram=3)
    a = ' '.join(f'w{i}' for i in range(400))
    c = ' '.join(f'w{i}' if i % 10 else 'x' for i in range(400))
    sa, sc = mh.signature(a), mh.signature(c)
    ja = len(set(mh.shingles(a)) & set(mh.shingles(c))) / len(set(mh.shingles(a)) | set(mh.shingles(c)))
    assert abs((sa == sc).mean() - ja) < 0.1


def test_quality_rules():
    from foundry_ext.prep.quality import QualityConfig, QualityFilter
    g = QualityFilter(QualityConfig.preset('gopher'))
    good = ('The history of the river valley is long, and the people who have lived there with their '
            'families have told many stories about it. ' + 'Farmers planted wheat in spring; traders '
            'came from the coast to buy grain, and the town that grew around the market became known for '
            'its bridges, its music and the quiet patience of its craftsmen, who worked stone and wood.')
    assert g.check(good) is None
    assert g.check('too short') == 'min_words'
    assert g.check('#tag ' * 60 + good) == 'symbol_ratio'
    assert g.check(('the same line with that word and more\n' * 20) + good) == 'dup_lines'
    assert g.check(('alpha beta gamma delta ' * 30) + good) in ('top_ngram', 'dup_ngram')
    assert g.check('1234 5678 ' * 40 + good) == 'alpha_words'
    q = QualityFilter(QualityConfig(max_non_alpha_ratio=0.3))
    assert q.check('{[(=>)]} 12345 ;;;;') == 'non_alpha_ratio' and q.check(good) is None
    with pytest.raises(UserError, match='not a preset'):
        QualityConfig.preset('nope')


def test_cli_curation_table_and_json(tmp_path, tiny_tokenizer):
    recs = [{'text': _prose(i, 80), 'src': 'a'} for i in range(30)] + [{'text': 'tiny', 'src': 'a'}] * 3
    _jsonl(tmp_path / 'in' / 'x.jsonl', recs, ['garbage'])
    r = subprocess.run([sys.executable, str(ROOT / 'data_prep' / 'convert_jsonl_to_mds.py'), '--input',
                        f'val={tmp_path / "in"}', '--tokenizer', str(tiny_tokenizer), '--out', str(tmp_path / 'o'),
                        '--concat_tokens', '16', '--domain_field', 'src', '--exact_dedup', '--min_words', '10',
                        '--num_proc', '2'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'quality:min_words' in r.stdout and 'exact_dedup' in r.stdout and 'x.jsonl:34' in r.stdout
    stats = json.loads((tmp_path / 'o' / 'stats.json').read_text())
    steps = {s['step']: s['dropped'] for s in stats['curation']['steps']}
    assert steps == {'bad_records': 1, 'non_utf8_skipped': 0, 'empty': 0, 'quality:min_words': 3, 'exact_dedup': 0}
    assert stats['domains']['a']['val']['docs'] == 30 and stats['curation']['flags']['quality'] == {'min_words': 10}


def test_cli_text_files_with_domain(tmp_path, tiny_tokenizer):
    for i in range(12):
        (tmp_path / 'notes' / f'{i}.md').parent.mkdir(exist_ok=True)
        (tmp_path / 'notes' / f'{i}.md').write_text(_prose(i, 50))
    gz = tmp_path / 'notes' / 'z.txt.gz'
    gz.write_bytes(gzip.compress(_prose(50, 50).encode()))
    r = subprocess.run([sys.executable, str(ROOT / 'data_prep' / 'convert_text_to_mds.py'), '--input',
                        str(tmp_path / 'notes'), '--domain', 'notes', '--tokenizer', str(tiny_tokenizer),
                        '--out', str(tmp_path / 'o'), '--concat_tokens', '16'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / 'o' / 'stats.json').read_text())
    assert stats['domains']['notes']['train']['docs'] == 13 and stats['domains']['notes']['train']['files'] == 13


# ------------------------------------------------------------------ finetuning


def test_finetuning_dataset_for_llmfoundry_loader(tmp_path, tiny_tokenizer):
    from llmfoundry.data.finetuning.dataloader import build_finetuning_dataloader
    from transformers import AutoTokenizer

    from foundry_ext.prep.finetuning import convert_finetuning
    recs = []
    for i in range(12):
        recs.append({'prompt': f'What is {i} plus {i}?', 'response': f' It is {2 * i}.'})
        recs.append({'messages': [{'role': 'user', 'content': f'Say {i}.'}, {'role': 'assistant', 'content': f'{i}!'}]})
    recs.append({'prompt': 'word ' * 200, 'response': ' long'})  # prompt fills max_seq_len: no target left
    recs.append({'prompt': 'q', 'response': ' answer ' * 100})  # truncated by the loader
    f = _jsonl(tmp_path / 'sft.jsonl', recs, ['{"prompt": 1}'])
    with pytest.raises(UserError, match=r"sft\.jsonl:27: missing field 'response'"):  # bad rows stop it by default
        convert_finetuning([('train', f)], tiny_tokenizer, tmp_path / 'o2', max_seq_len=128)
    assert not (tmp_path / 'o2').exists()
    s = convert_finetuning([('train', f)], tiny_tokenizer, tmp_path / 'out', max_seq_len=128,
                           skip_bad_records=True)['splits']['train']
    assert (s['read'], s['bad_records'], s['written'], s['dropped_no_target'], s['truncated']) == (27, 1, 25, 1, 1)
    assert s['chat'] == 12 and 'sft.jsonl:27' in s['bad_record_examples'][0]
    stats = json.loads((tmp_path / 'out' / 'stats.json').read_text())
    assert stats['chat_template_name'].startswith('chatml') and '<|im_start|>' in stats['chat_template']
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    dl = build_finetuning_dataloader(tok, 4, {'remote': str(tmp_path / 'out'), 'local': str(tmp_path / 'cache'),
                                              'split': 'train', 'max_seq_len': 128,
                                              'decoder_only_format': True, 'shuffle': False}, num_workers=0,
                                     pin_memory=False, prefetch_factor=None, persistent_workers=False).dataloader
    batch = next(iter(dl))
    ids, labels = batch['input_ids'][0], batch['labels'][0]
    prompt = tok('What is 0 plus 0?', add_special_tokens=False)['input_ids']
    assert ids[:len(prompt)].tolist() == prompt and (labels[:len(prompt)] == -100).all()
    answer = tok(' It is 0.', add_special_tokens=False)['input_ids']
    assert labels[len(prompt):len(prompt) + len(answer)].tolist() == answer
