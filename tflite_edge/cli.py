"""What the device-side command lines share: absl flags, commands, one-line errors.

Each tool (`tflite_edge.patch`, `tflite_edge.fleet`) is a set of commands
over one set of absl flags, parsed like the trainer's (`--name=value`,
`--flagfile`, `--helpfull`), with the same failure: one line on stderr and
exit status 2. The flags live in a `FlagValues` of the tool's own, so the
tools and the trainer can share a process (tests, notebooks) without their
flag names colliding.

    python -m tflite_edge.patch apply --base=A --patch=P
"""

import dataclasses
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

from absl import flags

from tflite_edge import native_output
from tflite_edge.errors import PatchError


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a tool.

    Attributes:
      help: one line for the usage text.
      required: flags it cannot run without.
      optional: the other flags it takes (any other flag given is an error).
      run: does the work, given the parsed flags.
    """

    help: str
    required: Tuple[str, ...]
    optional: Tuple[str, ...]
    run: Callable[[flags.FlagValues], Optional[int]]


_COMMON = ("verbose", "flagfile", "help")


def usage(program: str, commands: Dict[str, Command]) -> str:
    lines = [f"usage: python -m {program} COMMAND --flag=value ...", "", "commands:"]
    for name, command in commands.items():
        given = " ".join([f"--{f}=..." for f in command.required]
                         + [f"[--{f}]" for f in command.optional])
        lines.append(f"  {name:<9} {command.help}\n            {given}")
    return "\n".join(lines)


def _parse(program: str, define: Callable[[flags.FlagValues], None],
           argv: Optional[Sequence[str]]):
    """(flag values, positional arguments, None) or (None, None, exit status) for --help."""
    argv = list(sys.argv if argv is None else [program, *argv])
    values = flags.FlagValues()
    define(values)
    flags.DEFINE_bool("verbose", False, "show what TensorFlow Lite prints natively",
                      flag_values=values)
    flags.DEFINE_bool("help", False, "show this help", flag_values=values)
    try:
        positional = values(argv)[1:]
    except ValueError as e:   # absl raises it bare for --noflag=value
        raise PatchError(str(e)) from None
    native_output.set_verbose(values["verbose"].value)
    return values, positional


def _one_line(action: Callable[[], Optional[int]]) -> int:
    """Runs `action`; any bad command line, PatchError or OSError is one line and status 2."""
    try:
        return action() or 0
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
    except PatchError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
    return 2


def run(program: str, commands: Dict[str, Command],
        define: Callable[[flags.FlagValues], None],
        argv: Optional[Sequence[str]] = None) -> int:
    """Parses `argv` (default: sys.argv) and runs its command.

    Any PatchError or OSError, and any bad command line, becomes one line on
    stderr and exit status 2.
    """
    def action():
        values, positional = _parse(program, define, argv)
        if values["help"].value:
            print(usage(program, commands) + "\n\nflags:\n" + values.get_help())
            return 0
        if not positional:
            raise PatchError(f"give a command: {', '.join(commands)} (--help lists them)")
        name, extra = positional[0], positional[1:]
        if name not in commands:
            raise PatchError(f"unknown command {name!r}: use one of {', '.join(commands)}")
        if extra:
            raise PatchError(f"unexpected argument(s): {' '.join(extra)} (flags start with --)")
        command = commands[name]
        missing = [f for f in command.required if values[f].value is None]
        if missing:
            raise PatchError(f"{name} needs --{missing[0]}")
        allowed = set(command.required) | set(command.optional) | set(_COMMON)
        stray = [f for f in values if values[f].present and f not in allowed]
        if stray:
            raise PatchError(f"{name} does not take --{stray[0]}")
        return command.run(values)
    return _one_line(action)


def run_single(program: str, define: Callable[[flags.FlagValues], None],
               required: Sequence[str], function, argv: Optional[Sequence[str]] = None) -> int:
    """Like `run`, for a tool without commands that takes one file argument."""
    def action():
        values, positional = _parse(program, define, argv)
        if values["help"].value:
            print(f"usage: python -m {program} --flag=value ... FILE\n\nflags:\n"
                  + values.get_help())
            return 0
        missing = [f for f in required if values[f].value is None]
        if missing:
            raise PatchError(f"give --{missing[0]}")
        if len(positional) != 1:
            raise PatchError(f"give one file, not {len(positional)} ({' '.join(positional)})")
        return function(values, positional[0])
    return _one_line(action)
