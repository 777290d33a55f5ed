"""The train command's bad-input wrapper around LLM Foundry's ``train``.

Before the build: streaming's leftovers of killed runs on this machine are removed (only those
no live process holds, :mod:`foundry_ext.data.leftovers`), and the training data's fingerprint is
added to the config as the ``data_fingerprint`` callback (:mod:`foundry_ext.data.fingerprint`), so
every checkpoint carries it and a resume on other data is refused.

Validation (``config/validate.py``) catches the mistakes it can before the heavy imports; what
is left surfaces as an exception from deep inside the build or the loop. :func:`run` turns it into
one ``error:`` line naming the exception and where the full traceback was written (the run's
folder when it exists, else the temp folder); ``--debug`` (or ``FOUNDRY_EXT_DEBUG=1``) prints the
traceback as well. The config LLM Foundry prints and logs, the message and the traceback file are
stripped of secrets (:mod:`foundry_ext.runs.redact`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from foundry_ext import env
from foundry_ext.errors import UserError, exit_with
from foundry_ext.runs.redact import redact, redact_text

CRASH = 1     # a failure we could not attribute to the input (2 is a user mistake)


def pop_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere on the command line (removed) or FOUNDRY_EXT_DEBUG=1."""
    debug = '--debug' in argv or os.environ.get('FOUNDRY_EXT_DEBUG', '') not in ('', '0', 'false')
    return debug, [a for a in argv if a != '--debug']


def log_path(cfg: dict[str, Any]) -> Path:
    """Where the traceback goes: an existing local run folder, else <tmp>/foundry_ext/."""
    name = f"{cfg.get('run_name') or 'run'}-rank{env.rank()}-error.log"
    loggers = cfg.get('loggers')
    jsonl = loggers.get('metrics_jsonl') if isinstance(loggers, dict) else None
    if not isinstance(jsonl, dict):
        jsonl = {}
    for folder in (jsonl.get('folder'), cfg.get('save_folder')):
        if isinstance(folder, str) and '://' not in folder and Path(folder).is_dir():
            return Path(folder) / name
    return Path(tempfile.gettempdir()) / 'foundry_ext' / name


def one_line(e: BaseException, limit: int = 300) -> str:
    msg = ' '.join(str(e).split()) or '(no message)'
    if len(msg) > limit:
        msg = msg[:limit - 3] + '...'
    return redact_text(f'{type(e).__name__}: {msg}')


@contextlib.contextmanager
def redacted_config_logging() -> Iterator[None]:
    """LLM Foundry prints the whole resolved config and sends it to every logger: redact it there."""
    lf_train: Any = sys.modules.get('llmfoundry.command_utils.train')
    if lf_train is None:          # not the LLM Foundry train path (nothing of theirs will log a config)
        yield
        return
    original = lf_train.log_config

    def log_config(logger: Any, cfg: dict[str, Any]) -> None:
        original(logger, redact(cfg))
    lf_train.log_config = log_config
    try:
        yield
    finally:
        lf_train.log_config = original


def before_build(cfg: dict[str, Any]) -> None:
    from foundry_ext.data import fingerprint
    from foundry_ext.data.leftovers import clean_stale_streaming_state
    if env.local_rank() == 0:
        clean_stale_streaming_state()
    fingerprint.add_to_config(cfg)


def run(fn: Callable[[], Any], cfg: dict[str, Any], debug: bool = False) -> int:
    """``fn()`` (which reads ``cfg`` when called) -> 0; a UserError -> its line, exit 2; any other
    exception -> one line + the traceback's path, exit 1."""
    try:
        before_build(cfg)
        with redacted_config_logging():
            fn()
    except UserError as e:
        return exit_with(UserError(redact_text(str(e))))
    except Exception as e:  # noqa: BLE001 - the point: nothing reaches the user as a bare traceback
        tb = redact_text(traceback.format_exc())
        path = log_path(cfg)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(tb)
            where = f'full traceback in {path}'
        except OSError:
            where = 'the traceback could not be written'
        if debug:
            print(tb, file=sys.stderr, end='')
        hint = '' if debug else '; rerun with --debug to print it'
        print(f'error: training failed: {one_line(e)} ({where}{hint})', file=sys.stderr)
        return CRASH
    return 0
