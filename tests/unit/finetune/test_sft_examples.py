"""Chat templates, turn boundaries and train_on masking (foundry_ext.prep.sft_examples)."""
import json

import pytest

from foundry_ext.errors import UserError
from foundry_ext.prep.sft_examples import (
    CHATML,
    IGNORE,
    ChatTemplate,
    Fields,
    parse_row,
    read_rows,
    resolve_template,
    stitch,
    tokenize_rows,
    trained_count,
)

from conftest import write_jsonl

LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
CONV = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'name: Ada\nWho?'},
        {'role': 'assistant', 'content': 'Ada'}, {'role': 'user', 'content': 'Age?'},
        {'role': 'assistant', 'content': '41'}]


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


@pytest.fixture(scope='module')
def llama_tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    t.add_special_tokens({'bos_token': '<|begin_of_text|>', 'additional_special_tokens':
                          ['<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>']})
    return t


def _rows(conv):
    return [parse_row({'messages': conv}, where='t.jsonl:1')]


def _spans(tok, ids, labels):
    """Decoded trained spans (contiguous runs of labels != -100 after position 0)."""
    out, cur = [], []
    for i, (t, lab) in enumerate(zip(ids, labels)):
        if i > 0 and lab != IGNORE:
            cur.append(t)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


@pytest.mark.parametrize('train_on,expect', [
    ('last_assistant', ['41<|im_end|><|endoftext|>']),
    ('all_assistant', ['Ada<|im_end|>', '41<|im_end|><|endoftext|>']),
])
def test_chatml_multi_turn_boundaries(tok, train_on, expect):
    t = ChatTemplate(CHATML, 'chatml')
    [turns] = tokenize_rows(_rows(CONV), tok, t)
    assert len(turns) == 2
    ids, labels = stitch(turns, train_on, tok.eos_token_id)
    rendered = tok.apply_chat_template(CONV, chat_template=CHATML, tokenize=False)
    # the tokens are the whole rendered conversation (less the newline after the last <|im_end|>) + EOS
    assert tok.decode(ids) == rendered.rstrip('\n') + tok.eos_token
    assert _spans(tok, ids, labels) == expect  # headers, system, user text and the "\n" after <|im_end|> untrained
    prompt2 = tok.decode(turns[1][0])
    assert prompt2.startswith('\n<|im_start|>user') and prompt2.endswith('<|im_start|>assistant\n')


def test_everything_trains_prompts_too(tok):
    [turns] = tokenize_rows(_rows(CONV), tok, ChatTemplate(CHATML, 'chatml'))
    ids, labels = stitch(turns, 'everything', tok.eos_token_id)
    assert trained_count(labels) == len(ids) - 1


def test_llama3_style_template(llama_tok):
    t = ChatTemplate(LLAMA3, 'llama3')
    conv = [{**m, 'content': m['content'] + '  '} if m['role'] == 'assistant' else m for m in CONV]  # trimmed
    [turns] = tokenize_rows(_rows(conv), llama_tok, t)
    ids, labels = stitch(turns, 'all_assistant', llama_tok.eos_token_id)
    assert ids[0] == llama_tok.bos_token_id and ids.count(llama_tok.bos_token_id) == 1  # the template's BOS, once
    eot = llama_tok.convert_tokens_to_ids('<|eot_id|>')
    assert _spans(llama_tok, ids, labels) == ['Ada<|eot_id|>', '41<|eot_id|><|endoftext|>']
    after = [i for i, x in enumerate(ids) if x == eot and labels[i - 1] != IGNORE]
    assert len(after) == 2 and all(labels[i] == eot for i in after)  # end-of-turn of a trained turn: trained
    hdr = llama_tok.convert_tokens_to_ids('<|start_header_id|>')
    assert all(labels[i] == IGNORE for i, x in enumerate(ids) if x == hdr)  # role headers never


def test_resolve_template(tok, tmp_path):
    assert resolve_template(tok, None).name.startswith('chatml')
    f = tmp_path / 't.jinja'
    f.write_text(LLAMA3)
    assert resolve_template(tok, str(f)).text == LLAMA3
    assert resolve_template(tok, LLAMA3).name == 'the inline chat_template'
    with pytest.raises(UserError, match='has no chat template'):
        resolve_template(tok, 'tokenizer')
    with pytest.raises(UserError, match='is not a file, a Jinja template'):
        resolve_template(tok, 'nosuch.jinja')


def test_template_that_rejects_a_conversation(tok):
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
              "supported') }}{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}[assistant] {% endif %}")
    with pytest.raises(UserError) as e:
        tokenize_rows(_rows(CONV), tok, ChatTemplate(strict, 'chat template file strict.jinja'))
    msg = str(e.value)
    assert msg.startswith('t.jsonl:1: chat template file strict.jinja rejects this conversation')
    assert 'System role not supported' in msg and '\n' not in msg


def test_template_that_is_not_incremental(tok):
    last_only = ("{{ messages[-1]['content'] }}{% if add_generation_prompt %}>>{% endif %}")
    with pytest.raises(UserError, match='does not render this conversation turn by turn|differently from its'):
        tokenize_rows(_rows(CONV), tok, ChatTemplate(last_only, 'lastonly'))


def test_prompt_response_rows(tok):
    [turns] = tokenize_rows([parse_row({'prompt': 'Q: 2+2?\nA:', 'response': ' 4'})], tok, None)
    ids, labels = stitch(turns, 'all_assistant', tok.eos_token_id)
    assert tok.decode(ids) == 'Q: 2+2?\nA: 4<|endoftext|>'
    assert _spans(tok, ids, labels) == [' 4<|endoftext|>']


def test_bad_rows_one_line_with_line_numbers(tmp_path):
    f = tmp_path / 'sft.jsonl'
    f.write_text('\n'.join([
        json.dumps({'prompt': 'a', 'response': 'b'}),
        json.dumps({'prompt': 'a'}),                                              # 2: missing response
        json.dumps({'messages': [{'role': 'user', 'content': 'hi'}]}),           # 3: no assistant turn
        '{not json',                                                              # 4
        json.dumps({'messages': [{'role': 'assistant', 'content': 'a'}, {'role': 'user', 'content': 'q'}]}),  # 5
        json.dumps({'messages': [{'role': 'user', 'content': 1}, {'role': 'assistant', 'content': 'x'}]}),    # 6
    ]) + '\n')
    with pytest.raises(UserError) as e:
        read_rows([f])
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: missing field 'response'")
    assert '(and 4 more bad rows of 6: lines 3, 4, 5, 6)' in msg and '\n' not in msg
    rows, bad = read_rows([f], skip_bad=True)
    assert len(rows) == 1 and 'no assistant message' in bad[1] and 'not the assistant' in bad[3]
    assert read_rows([write_jsonl(tmp_path / 'c.jsonl', [{'q': 'x', 'a': 'y'}])], Fields('q', 'a'))[0][0].prompt == 'x'


def test_stitch_matches_llmfoundry(tok):
    from llmfoundry.data.finetuning.collator import stitch_turns_decoder_only
    [turns] = tokenize_rows(_rows(CONV), tok, ChatTemplate(CHATML, 'chatml'))
    lf_turns = [{'input_ids': p, 'labels': r} for p, r in turns]
    for ours, (tp, tr) in [('last_assistant', ('none', 'last')), ('all_assistant', ('none', 'all')),
                           ('everything', ('all', 'all'))]:
        assert stitch(turns, ours, tok.eos_token_id) == \
            tuple(stitch_turns_decoder_only(lf_turns, tp, tr, eos_token_id=tok.eos_token_id))
