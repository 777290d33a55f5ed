"""Keep secrets out of what a run writes: logged configs, metrics files, console lines, error logs.

A secret is (a) the value of an environment variable whose name says it is one (``HF_TOKEN``,
``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``*_PASSWORD`` ...; values of 8+ characters), wherever
it appears in a string; (b) the value of a config key whose name says it is one (``api_key``,
``token``, ``hf_token``, ``password``, ``secret``, ``aws_secret_access_key`` ...); (c) the password
part of a URL (``https://user:pass@host``). Each is replaced by ``<redacted>`` (``<redacted:NAME>``
for an environment variable). Pure Python, no imports beyond the standard library.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

# names of environment variables that hold credentials
_SECRET_ENV = re.compile(r'(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)',
                         re.IGNORECASE)
# names of config keys that hold credentials (not *_token_id, max_tokens, tokenizer ...)
_SECRET_KEY = re.compile(r'^(.*[_-])?(api[_-]?key|token|access[_-]?token|auth[_-]?token|secret|secret[_-]?key|'
                         r'password|passwd|private[_-]?key|access[_-]?key|aws_secret_access_key|'
                         r'aws_session_token|credentials?)$', re.IGNORECASE)
_URL_PASSWORD = re.compile(r'(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@', re.IGNORECASE)
MIN_LEN = 8
REDACTED = '<redacted>'


def secret_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``{value: NAME}`` of the credential-looking environment variables that are set."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, value in environ.items():
        if _SECRET_ENV.search(name) and value and len(value) >= MIN_LEN and not _harmless(value):
            out[value] = name
    return out


def _harmless(value: str) -> bool:
    """Flag-like values (true, offline, a number, a path) are not secrets even under a secret name."""
    v = value.strip().lower()
    return v in ('true', 'false', 'offline', 'online', 'disabled') or v.replace('.', '').isdigit() \
        or value.startswith(('/', './', '~'))


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.match(key))


def redact_text(text: str, secrets: Optional[Mapping[str, str]] = None) -> str:
    """``text`` with every secret value (and URL password) replaced."""
    secrets = secret_env() if secrets is None else secrets
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, f'<redacted:{secrets[value]}>')
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def redact(obj: Any, secrets: Optional[Mapping[str, str]] = None) -> Any:
    """A copy of plain data (dicts, lists, strings) with secrets replaced; other values as they are."""
    secrets = secret_env() if secrets is None else secrets
    if isinstance(obj, Mapping):
        return {k: (REDACTED if is_secret_key(k) and isinstance(v, str) and v else redact(v, secrets))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
