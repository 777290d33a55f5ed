import itertools
import json

import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.corpus import DOMAINS, build_corpus, is_val, iter_texts, list_domains, parse_mix

from conftest import tree_digest


def test_all_domains_with_both_splits(tiny_corpus):
    assert list_domains(tiny_corpus) == sorted(DOMAINS)
    manifest = json.loads((tiny_corpus / 'manifest.json').read_text())
    for d in DOMAINS:
        for split in ('train', 'val'):
            assert manifest['domains'][d][split]['docs'] > 0
            lines = (tiny_corpus / d / f'{split}.jsonl').read_text().splitlines()
            assert len(lines) == manifest['domains'][d][split]['docs']
            assert all(json.loads(line)['text'] for line in lines)


def test_size_is_respected(tiny_corpus):
    total = sum(len(t.encode()) for s in ('train', 'val') for t in iter_texts(tiny_corpus, s))
    assert 0.45e6 < total < 0.75e6


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_corpus):
    a = build_corpus(tmp_path / 'a', size_mb=0.6, seed=3, val_fraction=0.1)
    assert tree_digest(tmp_path / 'a') == tree_digest(tiny_corpus)
    b = build_corpus(tmp_path / 'b', size_mb=0.6, seed=4, val_fraction=0.1)
    assert a['domains']['arithmetic']['train']['sha256'] != b['domains']['arithmetic']['train']['sha256']


def test_val_membership_depends_only_on_seed_and_id():
    ids = [f'records:{i}' for i in range(2000)]
    first = [is_val(1, i, 0.1) for i in ids]
    assert first == [is_val(1, i, 0.1) for i in ids]
    assert 100 < sum(first) < 300


def test_procedural_domains_are_correct(tiny_corpus):
    for text in iter_texts(tiny_corpus, 'train'):
        if ' = ' in text and text[0].isdigit():
            for line in text.splitlines():
                lhs, rhs = line.split(' = ')
                assert eval(lhs) == int(rhs)  # noqa: S307 - our own generated arithmetic
            break
    else:
        pytest.fail('no arithmetic document found')


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match='unknown corpus domain'):
        parse_mix('code=1,poetry=1')
    with pytest.raises(UserError, match='name=fraction'):
        parse_mix('code')
    with pytest.raises(UserError, match='size_mb'):
        build_corpus(tmp_path / 'x', size_mb=0)
    (tmp_path / 'exists').mkdir()
    with pytest.raises(UserError, match='--overwrite'):
        build_corpus(tmp_path / 'exists', size_mb=0.1)
    with pytest.raises(UserError, match='does not exist'):
        list_domains(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='no domain'):
        list_domains(tmp_path / 'empty')
    # A failed build leaves nothing behind.
    with pytest.raises(UserError):
        build_corpus(tmp_path / 'tiny', size_mb=0.0005, val_fraction=0.01)
    assert not any(p.name.startswith('.tiny') or p.name == 'tiny' for p in tmp_path.iterdir())


def test_prose_leaves_out_our_own_readme():
    """foundry-ext's README changes with every commit; in the corpus it would make the demo drift."""
    import random
    from importlib import metadata

    from foundry_ext.prep.corpus import prose_docs
    assert metadata.distribution('foundry-ext')  # installed (editable) in the test venv
    ids = {d.id.split('#')[0] for d in itertools.islice(prose_docs(random.Random(0)), 100000)}
    assert 'prose:pkg:foundry-ext' not in ids and any(i.startswith('prose:pkg:') for i in ids)
