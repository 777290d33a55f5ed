"""The train command's guard (late failures are one line + a traceback file) and secret redaction."""
import json

from foundry_ext.runs.redact import redact, redact_text, secret_env

SECRET = 'hf_FAKEtoken1234567890abcdef'


def test_redact_env_values_keys_and_urls(monkeypatch):
    monkeypatch.setenv('HF_TOKEN', SECRET)
    monkeypatch.setenv('TOKENIZERS_PARALLELISM', 'false')     # a flag, not a secret
    assert secret_env() == {SECRET: 'HF_TOKEN'} or SECRET in secret_env()
    cfg = {'loggers': {'wandb': {'api_key': 'abcdefgh12345678', 'project': 'p'}},
           'model': {'pad_token_id': 0, 'note': f'token is {SECRET}'},
           'save_folder': 's3://user:hunter2secret@host/bucket', 'list': [SECRET]}
    out = redact(cfg)
    text = json.dumps(out)
    assert SECRET not in text and 'abcdefgh12345678' not in text and 'hunter2secret' not in text
    assert out['loggers']['wandb'] == {'api_key': '<redacted>', 'project': 'p'}
    assert out['model'] == {'pad_token_id': 0, 'note': 'token is <redacted:HF_TOKEN>'}
    assert redact_text(f'x {SECRET} y') == 'x <redacted:HF_TOKEN> y'


def test_guard_turns_a_late_failure_into_one_line(tmp_path, capsys, monkeypatch):
    from foundry_ext.commands import guard
    monkeypatch.setenv('WANDB_API_KEY', SECRET)
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    cfg = {'run_name': 'r', 'loggers': {'metrics_jsonl': {'folder': str(run_dir)}}}

    def boom():
        raise ValueError(f'deep inside Composer\nwith {SECRET} and more')
    assert guard.run(boom, cfg) == guard.CRASH
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith('error: training failed: ValueError: deep inside Composer with')
    assert SECRET not in err and '--debug' in err and 'Traceback' not in err
    log = run_dir / 'r-rank0-error.log'
    assert str(log) in err and 'Traceback' in log.read_text() and SECRET not in log.read_text()
    assert guard.run(boom, cfg, debug=True) == guard.CRASH
    assert 'Traceback' in capsys.readouterr().err


def test_guard_user_error_is_exit_2(capsys):
    from foundry_ext.commands import guard
    from foundry_ext.errors import UserError

    def bad():
        raise UserError('the checkpoint was trained on different data')
    assert guard.run(bad, {}) == 2
    assert capsys.readouterr().err == 'error: the checkpoint was trained on different data\n'
    assert guard.pop_debug(['a.yaml', '--debug', 'x=1']) == (True, ['a.yaml', 'x=1'])
