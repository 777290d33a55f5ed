"""Load a yaml + ``key=value`` overrides (omegaconf dotlist) into a plain, resolved dict.

Runs before torch or LLM Foundry are imported. ``key={...}`` / ``key=[...]`` overrides replace the
value at ``key`` (a dotlist merge would otherwise merge a mapping into the old one).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from foundry_ext.errors import UserError


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """yaml + ``key=value`` overrides -> a plain, fully resolved dict."""
    from omegaconf import OmegaConf as om
    from omegaconf.errors import OmegaConfBaseException

    p = Path(path)
    if not p.is_file():
        hint = ''
        if p.suffix in ('.yaml', '.yml') and Path('yamls').is_dir():
            near = difflib.get_close_matches(str(p), [str(x) for x in Path('yamls').rglob('*.yaml')], n=1)
            hint = f'; did you mean {near[0]}?' if near else '; the runnable configs are under yamls/'
        raise UserError(f'config file {p} does not exist{hint}')
    try:
        cfg = om.load(p)
    except Exception as e:  # yaml.YAMLError and friends
        msg = ' '.join(str(e).split())
        raise UserError(f'config file {p} is not valid yaml: {msg}') from None
    for o in overrides or []:
        if '=' not in o:
            raise UserError(f"override {o!r} is not key=value; write e.g. optimizer.lr=3e-4")
    for o in overrides or []:
        cfg = _override(cfg, o)
    try:
        data = om.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise UserError(f'cannot resolve config {p}: {msg}') from None
    if not isinstance(data, dict):
        raise UserError(f'config file {p} must be a mapping of keys to values at the top level')
    return data


def _override(cfg: Any, override: str) -> Any:
    """Apply one ``key=value`` override: the value replaces what is at ``key`` (a list may replace
    a mapping and the other way round; validation then names the key if the type is wrong)."""
    from omegaconf import OmegaConf as om
    from omegaconf.errors import OmegaConfBaseException

    key = override.partition('=')[0].strip()
    if not key:
        raise UserError(f"override {override!r} has no key; write e.g. optimizer.lr=3e-4")
    try:
        value = om.select(om.from_dotlist([override]), key)
    except (OmegaConfBaseException, ValueError) as e:
        raise UserError(f'override {override!r}: cannot parse the value ({str(e).splitlines()[0]})') from None
    try:
        om.update(cfg, key, value, merge=False, force_add=True)
    except (OmegaConfBaseException, ValueError, TypeError, IndexError) as e:
        parent = key.rpartition('.')[0]
        what = f'{parent} is not a mapping' if parent else str(e).splitlines()[0]
        raise UserError(f'override {override!r} cannot be applied: {what}') from None
    return cfg
