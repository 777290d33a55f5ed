"""The `sft` loader (jsonl and MDS), its config checks, routing for packing, and the bad inputs."""
import copy
import subprocess
import sys

import pytest

from foundry_ext import config
from foundry_ext.errors import UserError
from foundry_ext.finetune.config import route_packing

from conftest import ROOT, write_jsonl

CHAT = [{'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': f'Say {i} ' * (1 + i % 5)},
                      {'role': 'assistant', 'content': f'{i}!'}, {'role': 'user', 'content': 'Again?'},
                      {'role': 'assistant', 'content': f'{i} again.'}]} for i in range(40)]


@pytest.fixture()
def tok(tiny_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


def test_jsonl_loader_packs_and_sets_the_template(tmp_path, tok):
    from foundry_ext.finetune.loader import build_sft_dataloader
    data = write_jsonl(tmp_path / 'chat.jsonl', CHAT)
    assert tok.chat_template is None
    spec = build_sft_dataloader(tok, 4, dataset={'data': data, 'max_seq_len': 512, 'packing_ratio': 'auto'})
    assert '<|im_start|>' in tok.chat_template  # ChatML, now on the tokenizer the model saves
    batch = next(iter(spec.dataloader))
    assert batch['input_ids'].shape[0] == 4 and int(batch['sequence_id'].max()) >= 1
    assert spec.dataloader.batch_size > 4  # packing_ratio x batch examples per batch
    assert spec.get_num_tokens_in_batch(batch, token_type='loss_generating') == \
        int((batch['labels'][:, 1:] != -100).sum())
    assert spec.get_num_tokens_in_batch(batch) == int(batch['attention_mask'].sum())


def test_mds_loader_reads_the_converters_output(tmp_path, tok, tiny_tokenizer):
    from foundry_ext.finetune.loader import build_sft_dataloader
    from foundry_ext.prep.finetuning import convert_finetuning
    data = write_jsonl(tmp_path / 'chat.jsonl', CHAT)
    convert_finetuning([('train', data)], tiny_tokenizer, tmp_path / 'mds', max_seq_len=512, chat_template='chatml')
    spec = build_sft_dataloader(tok, 4, dataset={'data': str(tmp_path / 'mds'), 'max_seq_len': 512,
                                                 'train_on': 'last_assistant', 'shuffle': False})
    assert '<|im_start|>' in tok.chat_template
    batch = next(iter(spec.dataloader))
    text = tok.decode(batch['input_ids'][0][batch['labels'][0] != -100])
    assert text.endswith('again.<|im_end|><|endoftext|>') and '!' not in text  # last turn only


@pytest.fixture()
def cfg(tmp_path, tiny_tokenizer):
    c = config.load(ROOT / 'yamls' / 'finetune' / 'sft-mpt-cpu.yaml',
                    [f'variables.tokenizer_dir={tiny_tokenizer}', f'variables.data={tmp_path}',
                     f'variables.load_path={tmp_path}/base.pt'])
    (tmp_path / 'base.pt').write_bytes(b'')   # validation checks that load_path exists, not its content
    c['model']['vocab_size'] = 512
    write_jsonl(tmp_path / 'train.jsonl', CHAT)
    write_jsonl(tmp_path / 'val.jsonl', CHAT[:4])
    return c


def _problems(c):
    with pytest.raises(UserError) as e:
        config.validate(c)
    return str(e.value)


def test_shipped_sft_yamls_validate(cfg):
    config.validate(cfg)


def test_sft_config_bad_inputs(cfg, tmp_path):
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['train_on'] = 'all_assistants'
    assert "train_loader.dataset.train_on 'all_assistants' is not one of last_assistant, all_assistant, " \
           "everything; did you mean 'all_assistant'?" in _problems(c)
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['packing_ratio'] = 'atuo'
    assert 'train_loader.dataset.packing_ratio must be a number >= 1, auto or null' in _problems(c)
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['trian_on'] = 'everything'
    assert "unknown key train_loader.dataset.trian_on; did you mean 'train_on'?" in _problems(c)
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['chat_template'] = 'missing.jinja'
    assert "chat_template 'missing.jinja' is not a file" in _problems(c)
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['data'] = str(tmp_path / 'nope.jsonl')
    assert 'train_loader.dataset.data: input' in _problems(c) and 'matches no file' in _problems(c)
    c = copy.deepcopy(cfg)
    c['model']['attn_config']['attn_uses_sequence_id'] = False
    assert 'packing needs model.attn_config.attn_uses_sequence_id: true' in _problems(c)
    bad = tmp_path / 'bad'
    bad.mkdir()
    write_jsonl(bad / 'train.jsonl', CHAT[:3] + [{'prompt': 'only a prompt'}, {'messages': [{'role': 'user',
                                                                                            'content': 'hi'}]}])
    c = copy.deepcopy(cfg)
    c['train_loader']['dataset']['data'] = str(bad / 'train.jsonl')
    msg = _problems(c)
    assert f"train_loader.dataset: {bad}/train.jsonl:4: missing field 'response'" in msg
    assert '(and 1 more bad rows of 5: lines 5)' in msg


def test_route_packing(cfg):
    c = copy.deepcopy(cfg)
    del c['model']['attn_config']['attn_uses_sequence_id']
    [note] = route_packing(c)
    assert c['model']['attn_config']['attn_uses_sequence_id'] is True and 'attend only within' in note
    c = {'model': {'name': 'hf_causal_lm'}, 'train_loader': cfg['train_loader']}
    assert 'foundry_hf_causal_lm' in route_packing(c)[0] and c['model']['name'] == 'foundry_hf_causal_lm'
    c['train_loader']['dataset']['packing_ratio'] = None
    c['model']['name'] = 'hf_causal_lm'
    assert route_packing(c) == [] and c['model']['name'] == 'hf_causal_lm'


def test_llmfoundry_finetuning_rows_checked(cfg, tmp_path):
    f = write_jsonl(tmp_path / 'lf.jsonl', [{'prompt': 'a', 'response': 'b'}, {'prompt': 'a', 'response': 'b', 'id': 3}])
    c = copy.deepcopy(cfg)
    c['train_loader'] = {'name': 'finetuning', 'dataset': {'hf_name': 'json', 'split': 'train', 'max_seq_len': 64,
                                                           'decoder_only_format': True,
                                                           'hf_kwargs': {'data_files': {'train': f}}}}
    assert "lf.jsonl:2: extra key 'id': LLM Foundry's finetuning loader takes rows with exactly" in _problems(c)


def _run(args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'foundry_ext', *args], capture_output=True, text=True, cwd=cwd)


def test_train_bad_rows_fail_fast_with_one_line(cfg, tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / 'train.jsonl', CHAT[:2] + [{'messages': [{'role': 'user', 'content': 'no answer'}]}])
    r = _run(['train', str(ROOT / 'yamls' / 'finetune' / 'sft-mpt-cpu.yaml'), f'variables.tokenizer_dir={tiny_tokenizer}',
              f'variables.data={tmp_path}', f'run_name={tmp_path}/run', 'model.vocab_size=512',
              f'variables.load_path={tmp_path}/base.pt'])
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    [line] = [x for x in r.stderr.splitlines() if x.startswith('error:')]
    assert 'train.jsonl:3: no assistant message: nothing to train on' in line
    assert not (tmp_path / 'run').exists()


def test_show_labels_and_prep_cli(tmp_path, tiny_tokenizer):
    data = write_jsonl(tmp_path / 'chat.jsonl', CHAT[:6])
    r = _run(['show-labels', data, '--tokenizer', str(tiny_tokenizer), '--n', '2', '--max_seq_len', '128'])
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('--- example') == 2 and '«0!<|im_end|>»' in r.stdout and 'trained-token fraction' in r.stdout
    r = _run(['show-labels', data, '--tokenizer', str(tiny_tokenizer), '--train_on', 'last_assistant', '--n', '1'])
    assert '«0!' not in r.stdout and '«0 again.<|im_end|><|endoftext|>»' in r.stdout
    bad = write_jsonl(tmp_path / 'bad.jsonl', [{'prompt': 'x'}])
    r = _run(['show-labels', bad, '--tokenizer', str(tiny_tokenizer)])
    assert r.returncode == 2 and r.stderr.strip() == f"error: {bad}:1: missing field 'response' (has 'prompt'); " \
        'each row needs "prompt" and "response" strings, or a "messages" list of {"role", "content"} ending ' \
        'with an assistant message'
    r = _run(['prep', 'sft', '--input', bad, '--tokenizer', str(tiny_tokenizer), '--out', str(tmp_path / 'mds')])
    assert r.returncode == 2 and f'{bad}:1: missing field' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path / 'mds').exists()
    strict = tmp_path / 'strict.jinja'
    strict.write_text("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system "
                      "role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    r = _run(['prep', 'sft', '--input', data, '--tokenizer', str(tiny_tokenizer), '--out', str(tmp_path / 'mds'),
              '--chat_template', str(strict)])
    assert r.returncode == 2 and f'{data}:1: chat template file {strict} rejects this conversation (no system role)' \
        in r.stderr and not (tmp_path / 'mds').exists()
