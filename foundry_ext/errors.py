"""One exception type for every problem a user can fix, and the one-line way it is shown."""
from __future__ import annotations

import sys


class UserError(Exception):
    """A problem in the user's input (config, data, paths) with what to do about it.

    The message is a single line: what is wrong, then the fix.
    """


def exit_with(err: UserError, code: int = 2) -> int:
    print(f'error: {err}', file=sys.stderr)
    return code
