import json

import numpy as np
import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.text import convert_to_mds, unigram_baselines, unigram_cross_entropy

from conftest import TINY_SEQ, TINY_VOCAB


def _read_all(folder):
    from streaming import StreamingDataset
    from streaming.base.format import reader_from_json  # noqa: F401  (import check)
    ds = StreamingDataset(local=str(folder), shuffle=False, batch_size=1)
    return [ds[i]['tokens'] for i in range(ds.num_samples)]


def test_row_counts_and_lengths(tiny_corpus, tiny_mds):
    stats = json.loads((tiny_mds / 'stats.json').read_text())
    assert stats['dtype'] == 'uint16' and stats['vocab_size'] == TINY_VOCAB
    eos = stats['eos_token_id']
    for domain in ('code', 'prose', 'arithmetic', 'records'):
        for split in ('train', 'val'):
            s = stats['domains'][domain][split]
            rows = _read_all(tiny_mds / domain / split)
            assert len(rows) == s['samples'] > 0
            assert all(r.shape == (TINY_SEQ,) and r.dtype == np.uint16 for r in rows)
            n_eos = sum(int((r == eos).sum()) for r in rows)
            # one EOS per document; only the tail after the last full sample is dropped
            assert s['docs'] - n_eos == (1 if s['dropped_tail_tokens'] else 0) or n_eos == s['docs']
            counts = np.load(tiny_mds / domain / f'{split}.token_counts.npy')
            assert counts.sum() == s['tokens'] == len(rows) * TINY_SEQ


def test_tokens_decode_to_the_corpus(tiny_corpus, tiny_tokenizer, tiny_mds):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    first = json.loads((tiny_corpus / 'records' / 'train.jsonl').read_text().splitlines()[0])['text']
    row = _read_all(tiny_mds / 'records' / 'train')[0]
    assert first.startswith(tok.decode(row.tolist())[:40])


def test_llmfoundry_text_loader_reads_it(tiny_tokenizer, tiny_mds):
    from llmfoundry.data.text_data import StreamingTextDataset
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    ds = StreamingTextDataset(tokenizer=tok, max_seq_len=TINY_SEQ, local=str(tiny_mds / 'code'),
                              split='val', batch_size=2)
    x = ds[0]
    assert x.shape == (TINY_SEQ,) and x.dtype.is_floating_point is False


def test_unigram_cross_entropy_closed_form():
    train = np.array([3, 1, 0, 0])
    ev = np.array([1, 1, 0, 0])
    p = (train + 1) / (4 + 4)
    assert unigram_cross_entropy(train, ev) == pytest.approx(-(np.log(p[0]) + np.log(p[1])) / 2)


def test_unigram_baseline_below_uniform(tiny_mds):
    base = unigram_baselines(tiny_mds)
    assert set(base) == {'code', 'prose', 'arithmetic', 'records'}
    assert all(0 < v < np.log(TINY_VOCAB) for v in base.values())


def _write(folder, name, data: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def test_plain_text_folders_and_bad_bytes(tmp_path, tiny_tokenizer):
    src = tmp_path / 'in'
    _write(src / 'notes', 'a.txt', ('hello world. ' * 50).encode())
    _write(src / 'notes', 'b.txt', b'caf\xe9 latin-1 bytes ' * 30)
    with pytest.raises(UserError, match=r'b\.txt is not valid UTF-8.*--encoding_errors'):
        convert_to_mds(src, tiny_tokenizer, tmp_path / 'out', concat_tokens=16)
    assert list(tmp_path.iterdir()) == [src]  # nothing half-written
    stats = convert_to_mds(src, tiny_tokenizer, tmp_path / 'out', concat_tokens=16, encoding_errors='replace')
    assert stats['decode']['replaced_docs'] == 1
    assert stats['domains']['notes']['train']['docs'] == 2
    stats = convert_to_mds(src, tiny_tokenizer, tmp_path / 'out2', concat_tokens=16, encoding_errors='skip')
    assert stats['decode']['skipped_docs'] == 1 and stats['domains']['notes']['train']['docs'] == 1


def test_bad_inputs(tmp_path, tiny_tokenizer, tiny_corpus):
    with pytest.raises(UserError, match='does not exist'):
        convert_to_mds(tmp_path / 'nope', tiny_tokenizer, tmp_path / 'o')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='no domain sub-folders'):
        convert_to_mds(tmp_path / 'empty', tiny_tokenizer, tmp_path / 'o')
    with pytest.raises(UserError, match='no tokenizer.json'):
        convert_to_mds(tiny_corpus, tmp_path / 'empty', tmp_path / 'o')
    _write(tmp_path / 'j' / 'd', 'train.jsonl', b'{"text": "ok ok ok ok"}\nnot json\n')
    with pytest.raises(UserError, match=r'train\.jsonl:2 is not a JSON object'):
        convert_to_mds(tmp_path / 'j', tiny_tokenizer, tmp_path / 'o', concat_tokens=2, strict=True)
    # default: the bad line is skipped and counted (with its line number)
    stats = convert_to_mds(tmp_path / 'j', tiny_tokenizer, tmp_path / 'jo', concat_tokens=2)
    assert stats['curation']['steps'][0]['dropped'] == 1 and stats['domains']['d']['train']['docs'] == 1
    _write(tmp_path / 's' / 'd', 'train.jsonl', b'{"text": "hi"}\n')
    with pytest.raises(UserError, match='fewer than one sample'):
        convert_to_mds(tmp_path / 's', tiny_tokenizer, tmp_path / 'o', concat_tokens=4096)
    (tmp_path / 'taken').mkdir()
    with pytest.raises(UserError, match='--overwrite'):
        convert_to_mds(tiny_corpus, tiny_tokenizer, tmp_path / 'taken')
    assert not (tmp_path / 'o').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_cli_one_line_error(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    r = subprocess.run([sys.executable, str(ROOT / 'data_prep' / 'convert_text_to_mds.py'), '--input',
                        str(tmp_path / 'nope'), '--tokenizer', str(tmp_path), '--out', str(tmp_path / 'o')],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count('\n') == 0 and r.stderr.startswith('error: input folder')
