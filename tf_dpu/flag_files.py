"""The flag files that ship with the package, found by name.

`--flagfile=flags/quickstart.flags` works in a checkout; an installed
`tf-dpu-train` (a Colab runtime, a server) has no `flags/` folder beside it,
so a flag file that is not found as a path is looked up by name among the
ones the package carries: `--flagfile=quickstart`, or the same
`--flagfile=flags/quickstart.flags`.
"""

import os
from typing import List

from tf_dpu.errors import ConfigError

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flags")
_PREFIX = "--flagfile="


def names() -> List[str]:
    """The shipped flag files, without their `.flags` suffix."""
    try:
        return sorted(n[:-6] for n in os.listdir(FOLDER) if n.endswith(".flags"))
    except OSError:
        return []


def find(value: str) -> str:
    """The path of a flag file given as a path or by a shipped file's name.

    Raises:
      ConfigError: neither a readable file nor a shipped name.
    """
    if os.path.isfile(value):
        return value
    name = os.path.basename(value)
    name = name[:-6] if name.endswith(".flags") else name
    shipped = os.path.join(FOLDER, f"{name}.flags")
    if os.path.isfile(shipped):
        return shipped
    raise ConfigError(f"cannot read flag file {value}: no such file, and no shipped flag file "
                      f"of that name ({', '.join(names())})")


def resolve_argument(argument: str) -> str:
    """A command-line argument with a `--flagfile=` value resolved by `find`."""
    if argument.startswith(_PREFIX):
        return _PREFIX + find(argument[len(_PREFIX):])
    return argument
