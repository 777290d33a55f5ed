"""Deterministic faults for the resume harness and tests, loaded by LLM Foundry's ``code_paths``.

``FOUNDRY_EXT_FAULT=<signal>@<where>:<step>[@rank<r>]`` sends ``signal`` (kill = SIGKILL, term =
SIGTERM, int = SIGINT) to this process at one point of the run, once:

* ``step:N``  -- in the middle of training batch N (after its forward pass, before the update)
* ``load:N``  -- while batch N is being loaded (just before the loader is asked for it)
* ``eval:N``  -- during the evaluation at step N (after its first eval batch)
* ``save:N``  -- during the write of the checkpoint of step N (the file half written)

Without ``@rank<r>`` every rank gets the signal (a whole job being preempted or losing its node).
This file is test tooling, not part of the library.
"""
import os
import signal

SPEC = os.environ.get('FOUNDRY_EXT_FAULT', '')


def _parse(spec):
    if not spec:
        return None
    parts = spec.split('@')
    sig = {'kill': signal.SIGKILL, 'term': signal.SIGTERM, 'int': signal.SIGINT}[parts[0]]
    where, step = parts[1].split(':')
    rank = int(parts[2][4:]) if len(parts) > 2 else None
    return sig, where, int(step), rank


FAULT = _parse(SPEC)
_fired = False


def _fire():
    global _fired
    if _fired:
        return
    _fired = True
    os.kill(os.getpid(), FAULT[0])


def _install():
    from composer.core import Event
    from composer.core.engine import Engine
    from composer.utils import checkpoint as ck
    from composer.utils import dist

    sig, where, step, rank = FAULT
    if rank is not None and dist.get_global_rank() != rank:
        return
    events = {'step': Event.AFTER_FORWARD, 'load': Event.BEFORE_DATALOADER, 'eval': Event.EVAL_BATCH_END}
    if where in events:
        orig = Engine.run_event

        def run_event(self, event):
            out = orig(self, event)
            ev = Event(event) if isinstance(event, str) else event
            if ev == events[where] and int(self.state.timestamp.batch) == step:
                _fire()
            return out
        Engine.run_event = run_event
    elif where == 'save':
        orig_write = ck._write_checkpoint_file

        def write(state_dict, filename):
            orig_write(state_dict, filename)
            ts = state_dict.get('state', {}).get('timestamp', {}).get('Timestamp', {})
            if int(ts.get('batch', -1)) == step:
                if sig == signal.SIGKILL:   # what a kill half-way through the write leaves
                    with open(filename, 'r+b') as f:
                        f.truncate(os.path.getsize(filename) // 2)
                _fire()
        ck._write_checkpoint_file = write
    else:
        raise ValueError(f'FOUNDRY_EXT_FAULT: unknown place {where!r}')


if FAULT is not None:
    _install()
