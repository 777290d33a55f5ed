"""The package's shape: no import cycles, no module importing from a floor above its own.

Every ``import foundry_ext...`` in every module is read from the AST (function-level imports
included: a cycle hidden inside a function is still a cycle).
"""
import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / 'foundry_ext'

# Floors, lowest first. A module may import from its own floor and below, never above.
FLOORS = [
    {'errors', 'atomic', 'validation', 'env', 'safeload'},              # ground floor
    {'prep', 'data', 'models', 'throughput', 'stability', 'runs'},      # stages and feature packages
    {'gauntlet', 'finetune', 'checkpoint', 'plan'},                     # features built on those
    {'config'},                                                         # validation dispatch over all owners
    {'commands'},                                                       # what the command line runs
    {'cli', '__main__', '__init__'},                                    # the command line itself
]


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _imports(path: Path, mods: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith('foundry_ext')}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('foundry_ext'):
            for a in node.names:   # `from pkg import module` imports the module; `from mod import name` the mod
                sub = f'{node.module}.{a.name}'
                out.add(sub if sub in mods else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_name(p): p for p in PKG.rglob('*.py')}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        graph[name] |= {m for m in _imports(path, set(mods)) if m in mods and m != name}
    return graph


def _floor(module: str) -> int:
    top = module.split('.')[1] if '.' in module else '__init__'
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise AssertionError(f'{module}: top-level name {top!r} is on no floor; add it to FLOORS')


def test_every_module_is_on_a_floor():
    for m in _graph():
        _floor(m)


def test_no_upward_imports():
    bad = [f'{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})'
           for a, deps in _graph().items() for b in deps if _floor(b) > _floor(a)
           and not (a.split('.')[:2] == b.split('.')[:2])]          # a package's __init__ may re-export its own
    assert not bad, '\n'.join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_module_import_cycles():
    graph = {a: {b for b in deps if not a.startswith(b + '.')} for a, deps in _graph().items()}  # a parent package
    cycle = _cycle(graph)
    assert cycle is None, ' -> '.join(cycle or [])


def test_no_package_import_cycles():
    pk = lambda m: '.'.join(m.split('.')[:2])  # noqa: E731
    graph: dict[str, set[str]] = defaultdict(set)
    for a, deps in _graph().items():
        graph[pk(a)] |= {pk(b) for b in deps if pk(b) != pk(a)}
    cycle = _cycle(graph)
    assert cycle is None, ' -> '.join(cycle or [])


@pytest.mark.parametrize('path', sorted(PKG.rglob('*.py')), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= 600, f'{path.relative_to(PKG)} has {n} lines; split it by job (files stay under ~500)'
