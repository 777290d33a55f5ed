"""data_prep inputs: a damaged input is one line naming the file, exit 2, and no output is left."""
import gzip
import json
import random

import pytest
from bad_helpers import assert_one_line, run_cli

from conftest import tree_digest


def _jsonl_bytes(n=3000):
    rng = random.Random(0)
    words = ['alpha', 'river', 'stone', 'cloud', 'seven', 'light', 'data', 'tree']
    return ''.join(json.dumps({'text': ' '.join(rng.choice(words) for _ in range(60))}) + '\n'
                   for _ in range(n)).encode()


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('prep_inputs')
    z = gzip.compress(_jsonl_bytes())
    (d / 'good.jsonl.gz').write_bytes(z)
    (d / 'trunc.jsonl.gz').write_bytes(z[:len(z) // 2])
    (d / 'notgzip.jsonl.gz').write_bytes(b'this is plain text, not gzip\n' * 50)
    text = gzip.compress(_jsonl_bytes().replace(b'{"text": ', b''))
    (d / 'corpus' / 'notes').mkdir(parents=True)
    (d / 'corpus' / 'notes' / 'doc.txt.gz').write_bytes(text[:len(text) * 2 // 3])
    (d / 'sft.jsonl.gz').write_bytes(gzip.compress(b''.join(
        json.dumps({'prompt': f'q{i} ' * 20, 'response': f'a{i} ' * 20}).encode() + b'\n' for i in range(2000)))[:4000])
    return d


@pytest.mark.parametrize('kind,args,needle', [
    ('jsonl', ['--input', '{d}/trunc.jsonl.gz'], '{d}/trunc.jsonl.gz is damaged after'),
    ('jsonl', ['--input', '{d}/notgzip.jsonl.gz'], '{d}/notgzip.jsonl.gz is damaged: it is not a gzip file'),
    ('text', ['--input', '{d}/corpus'], '{d}/corpus/notes/doc.txt.gz is damaged after'),
    ('jsonl', ['--input', '{d}/nothing-*.jsonl'], 'matches no file'),
])
def test_damaged_input_is_one_line_no_output(inputs, tiny_tokenizer, tmp_path, kind, args, needle):
    out = tmp_path / 'out'
    r = run_cli('prep', kind, *[a.format(d=inputs) for a in args], '--tokenizer', tiny_tokenizer, '--out', out,
                *(['--num_proc', '1'] if kind != 'sft' else []))
    line = assert_one_line(r, 2, needle.format(d=inputs))
    if 'damaged' in needle:
        assert 'truncated' in line or 'not a gzip file' in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out')]   # no temp folder left either


def test_damaged_input_keeps_the_previous_output(inputs, tiny_tokenizer, tmp_path):
    out = tmp_path / 'out'
    r = run_cli('prep', 'jsonl', '--input', inputs / 'good.jsonl.gz', '--tokenizer', tiny_tokenizer, '--out', out,
                '--num_proc', '1')
    assert r.returncode == 0, r.stderr
    before = tree_digest(out)
    r = run_cli('prep', 'jsonl', '--input', inputs / 'trunc.jsonl.gz', '--tokenizer', tiny_tokenizer, '--out', out,
                '--num_proc', '2', '--overwrite')
    assert_one_line(r, 2, 'trunc.jsonl.gz is damaged')
    assert tree_digest(out) == before


def test_reader_reports_offset_and_line(inputs):
    from foundry_ext.errors import UserError
    from foundry_ext.prep.sources import open_bytes
    with pytest.raises(UserError) as e:
        with open_bytes(inputs / 'trunc.jsonl.gz') as f:
            for _ in f:
                pass
    msg = str(e.value)
    assert 'is damaged after' in msg and '(line ' in msg and 'truncated' in msg and '\n' not in msg
