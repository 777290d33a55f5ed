import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.tokenizer import EOS, tokenizer_vocab_size, train_tokenizer

from conftest import TINY_VOCAB


def test_autotokenizer_loads_and_round_trips(tiny_tokenizer):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    assert tok.eos_token == EOS and tok.pad_token_id is not None
    assert len(tok) == TINY_VOCAB == tokenizer_vocab_size(tiny_tokenizer)
    for text in ['def f(x):\n    return x + 1\n', '12 + 35 = 47', 'Grüße, 東京 — naïve café 🙂', '  spaces\t\ttabs\n']:
        ids = tok(text, add_special_tokens=False)['input_ids']
        assert tok.decode(ids) == text
        assert max(ids) < TINY_VOCAB


def test_llmfoundry_builds_it(tiny_tokenizer):
    from llmfoundry.utils.builders import build_tokenizer
    tok = build_tokenizer(str(tiny_tokenizer), {'model_max_length': 64})
    assert tok.model_max_length == 64 and tok.eos_token == EOS


def test_merges_compress(tiny_tokenizer):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    text = 'occupation: teacher\nemail: ada.berg@lisbon.example\n'
    assert len(tok(text)['input_ids']) < len(text.encode()) / 2


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match='vocab_size'):
        train_tokenizer(['abc'], tmp_path / 't', vocab_size=10)
    with pytest.raises(UserError, match='empty'):
        train_tokenizer([], tmp_path / 't', vocab_size=400)
    assert not (tmp_path / 't').exists()
    assert tokenizer_vocab_size(tmp_path / 'missing') is None
