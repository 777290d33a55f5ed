"""`foundry-ext export` of MPT checkpoints: Llama folders, MPT folders, dtypes, and the verifier catching
injected export bugs (random embeddings, wrong GQA head count, dropped tokenizer settings)."""
import os
import pickle

import pytest
import torch
from tinyckpt import CHAT_TEMPLATE, LLAMA_MPT, PLAIN_MPT, logits, mpt_model, read_json, save_composer, tokenizer

from foundry_ext.checkpoint import export as E
from foundry_ext.checkpoint.export import ExportOptions, export
from foundry_ext.checkpoint.load import Opaque, read_checkpoint, resolve_checkpoint, safe_load
from foundry_ext.errors import UserError


@pytest.fixture(scope='module')
def tok(tiny_tokenizer):
    return tokenizer(tiny_tokenizer)


@pytest.fixture(scope='module')
def llama_ck(tok, tmp_path_factory):
    model = mpt_model(tok, LLAMA_MPT)
    path = save_composer(model, tmp_path_factory.mktemp('llama_run') / 'checkpoints' / 'ep0-ba1-rank0.pt')
    (path.parent / 'latest-rank0.pt').symlink_to(path.name)
    return path, model.model.eval()


IDS = torch.tensor([[5, 17, 99, 3, 250, 7, 7, 64, 300, 2, 11, 480]])


def test_llama_mpt_exports_a_plain_llama_folder(llama_ck, tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    path, src = llama_ck
    out = tmp_path / 'hf'
    r = export(ExportOptions(str(path.parent.parent), str(out)), log=lambda s: None)   # the run folder
    assert r.source == path and r.architecture == 'LlamaForCausalLM' and r.dtype == 'float32'
    files = {p.name for p in out.iterdir()}
    assert {'model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.json',
            'tokenizer_config.json'} <= files and not any(f.endswith('.py') for f in files)
    model = AutoModelForCausalLM.from_pretrained(str(out))          # no trust_remote_code
    assert type(model) is LlamaForCausalLM and model.config.num_key_value_heads == 2
    assert torch.allclose(logits(model, IDS), logits(src, IDS), atol=1e-4)
    out_tok = AutoTokenizer.from_pretrained(str(out))
    assert out_tok.chat_template == CHAT_TEMPLATE and out_tok.model_max_length == 64
    assert 'token_type_ids' not in out_tok('hi')                    # generate(**tok(text)) works
    gen = read_json(out / 'generation_config.json')
    assert gen['eos_token_id'] == tok.eos_token_id and gen['pad_token_id'] == tok.pad_token_id
    info = read_json(out / 'foundry_export.json')
    assert info['verification']['greedy_equal'] == 2 and info['verification']['kl'] < 1e-9
    assert r.verdict.max_abs < 1e-4


def test_bf16_export_rounds_once_and_verifies_in_that_dtype(llama_ck, tmp_path):
    from safetensors import safe_open
    path, _ = llama_ck
    r = export(ExportOptions(str(path), str(tmp_path / 'bf16'), dtype='bf16'), log=lambda s: None)
    assert r.dtype == 'bfloat16' and r.dtype_kl is not None and r.dtype_kl > 0
    with safe_open(str(tmp_path / 'bf16' / 'model.safetensors'), 'pt') as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert read_json(tmp_path / 'bf16' / 'config.json')['torch_dtype'] == 'bfloat16'


def _fails(opts, match):
    with pytest.raises(UserError, match=match) as e:
        export(opts, log=lambda s: None)
    assert '\n' not in str(e.value)
    assert not os.path.exists(opts.out) and not any(p.name.startswith('.') for p in os.scandir(os.path.dirname(opts.out)))
    return str(e.value)


def test_verifier_catches_random_embeddings(llama_ck, tmp_path, monkeypatch):
    real = E.mpt_to_llama_weights

    def bug(cfg, weights):
        w = real(cfg, weights)
        w['model.embed_tokens.weight'] = torch.randn_like(w['model.embed_tokens.weight']) * 0.02
        return w
    monkeypatch.setattr(E, 'mpt_to_llama_weights', bug)
    msg = _fails(ExportOptions(str(llama_ck[0]), str(tmp_path / 'out')), 'export verification failed: KL')
    assert 'nothing was written' in msg


def test_verifier_catches_a_wrong_gqa_head_count(llama_ck, tmp_path, monkeypatch):
    """The weights are right but config.json says 4 kv heads: the folder must not pass."""
    import json
    real = E._write_llama

    def bug(src, ck, tok, dtype, tmp):
        real(src, ck, tok, dtype, tmp)
        cfg = json.loads((tmp / 'config.json').read_text())
        (tmp / 'config.json').write_text(json.dumps({**cfg, 'num_key_value_heads': 4}))
    monkeypatch.setattr(E, '_write_llama', bug)
    _fails(ExportOptions(str(llama_ck[0]), str(tmp_path / 'out')), 'export verification failed: the written folder does not load')


def test_verifier_catches_same_shaped_gqa_mixups(llama_ck, tmp_path, monkeypatch):
    """k and v swapped: every shape fits, only the numbers betray it."""
    real = E.mpt_to_llama_weights

    def bug(cfg, weights):
        w = real(cfg, weights)
        for i in range(cfg['n_layers']):
            k, v = f'model.layers.{i}.self_attn.k_proj.weight', f'model.layers.{i}.self_attn.v_proj.weight'
            w[k], w[v] = w[v], w[k]
        return w
    monkeypatch.setattr(E, 'mpt_to_llama_weights', bug)
    _fails(ExportOptions(str(llama_ck[0]), str(tmp_path / 'out')), 'export verification failed')


@pytest.mark.parametrize('setting', ['chat_template', 'eos_token', 'model_max_length'])
def test_verifier_catches_dropped_tokenizer_settings(llama_ck, tmp_path, monkeypatch, setting):
    import copy
    real = E._export_tokenizer

    def bug(tok, model):
        out, notes = real(tok, model)
        out = copy.deepcopy(out)
        if setting == 'chat_template':
            out.chat_template = None
        elif setting == 'eos_token':
            out.eos_token = '<|pad|>'
        else:
            out.model_max_length = out.init_kwargs['model_max_length'] = 2048
        return out, notes
    monkeypatch.setattr(E, '_export_tokenizer', bug)
    _fails(ExportOptions(str(llama_ck[0]), str(tmp_path / 'out')),
           'export verification failed: .*(chat template|eos_token_id|model_max_length)')


def test_existing_output_is_one_line_without_overwrite(llama_ck, tmp_path, capsys):
    from foundry_ext.cli import main
    out = tmp_path / 'taken'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    assert main(['export', str(llama_ck[0]), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '--overwrite' in err and '\n' not in err and 'Traceback' not in err
    assert (out / 'keep.txt').read_text() == 'mine'


def test_plain_mpt_exports_llm_foundry_mpt_classes(tok, tmp_path):
    from transformers import AutoModelForCausalLM
    model = mpt_model(tok, PLAIN_MPT, name='mpt_causal_lm')
    path = save_composer(model, tmp_path / 'ck' / 'ep0-ba1-rank0.pt')
    with pytest.raises(UserError, match='does not map onto Llama: norm_type'):
        export(ExportOptions(str(path), str(tmp_path / 'as_llama'), arch='llama'), log=lambda s: None)
    r = export(ExportOptions(str(path), str(tmp_path / 'mpt')), log=lambda s: None)
    assert r.architecture == 'MPTForCausalLM' and 'trust_remote_code=True' in r.load_hint
    assert 'norm_type low_precision_layernorm' in r.notes[0]
    cfg = read_json(tmp_path / 'mpt' / 'config.json')
    assert cfg['auto_map']['AutoModelForCausalLM'] == 'modeling_mpt.MPTForCausalLM'
    assert (tmp_path / 'mpt' / 'modeling_mpt.py').is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / 'mpt'), trust_remote_code=True)
    assert torch.allclose(logits(reloaded, IDS), logits(model.model.eval(), IDS), atol=1e-4)
    # models in: hf_causal_lm takes our MPT folder back (its code, so trust_remote_code: true)
    from llmfoundry.utils.builders import build_composer_model
    again = build_composer_model(name='hf_causal_lm', tokenizer=tok, cfg={
        'pretrained_model_name_or_path': str(tmp_path / 'mpt'), 'pretrained': True, 'trust_remote_code': True})
    assert torch.allclose(logits(again.model.eval(), IDS), logits(model.model.eval(), IDS), atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (os.system, ('touch /tmp/foundry_ext_pwned',))


class CallbackState:   # stands for an unknown callback's state class: loaded as an inert record
    def __init__(self):
        self.n = 3


def test_safe_load_runs_no_code_from_the_file(tmp_path):
    if os.path.exists('/tmp/foundry_ext_pwned'):
        os.remove('/tmp/foundry_ext_pwned')
    f = tmp_path / 'state.pt'
    torch.save({'state': {'model': {'w': torch.ones(2)}, 'callbacks': {'x': CallbackState()}}}, f)
    sd = safe_load(f)
    assert isinstance(sd['state']['callbacks']['x'], Opaque) and sd['state']['callbacks']['x'].state == {'n': 3}
    assert torch.equal(sd['state']['model']['w'], torch.ones(2))
    torch.save({'state': {'model': {}, 'callbacks': {'x': _Evil()}}}, tmp_path / 'evil.pt')
    with pytest.raises(UserError, match='refused: the checkpoint would call posix.system'):
        safe_load(tmp_path / 'evil.pt')
    assert not os.path.exists('/tmp/foundry_ext_pwned') and pickle.dumps is not None


def test_resolve_and_read(llama_ck, tmp_path):
    path, _ = llama_ck
    assert resolve_checkpoint(path.parent) == path and resolve_checkpoint(path.parent.parent) == path
    ck = read_checkpoint(path)
    assert ck.precision == 'fp32' and 'transformer.wte.weight' in ck.weights and not ck.sharded
    assert ck.config['model_type'] == 'mpt' and ck.peft_config is None
    with pytest.raises(UserError, match='no Composer checkpoint'):
        resolve_checkpoint(tmp_path)
    with pytest.raises(UserError, match='does not exist'):
        resolve_checkpoint(tmp_path / 'nope')


@pytest.mark.parametrize('case', ['missing', 'empty_dir', 'truncated', 'text', 'not_composer'])
def test_bad_checkpoints_are_one_line_and_write_nothing(llama_ck, tmp_path, capsys, case):
    from foundry_ext.cli import main
    src = tmp_path / 'src.pt'
    if case == 'empty_dir':
        src = tmp_path / 'run'
        src.mkdir()
    elif case == 'truncated':
        src.write_bytes(llama_ck[0].read_bytes()[:5000])
    elif case == 'text':
        src.write_text('not a checkpoint\n')
    elif case == 'not_composer':
        torch.save({'weight': torch.ones(2)}, src)
    out = tmp_path / 'out'
    assert main(['export', str(src), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    expect = {'missing': 'does not exist', 'empty_dir': 'no Composer checkpoint', 'truncated': 'cannot',
              'text': 'cannot read it as a torch checkpoint', 'not_composer': 'not a Composer checkpoint'}[case]
    assert expect in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.out')]


def test_written_files_are_readable_by_others(llama_ck, tmp_path):
    export(ExportOptions(str(llama_ck[0]), str(tmp_path / 'out'), verify=False), log=lambda s: None)
    mask = os.umask(0)
    os.umask(mask)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / 'out').iterdir()} == \
        {p.name: oct(0o666 & ~mask) for p in (tmp_path / 'out').iterdir()}
