"""What the device-side command lines share: one-line errors and exit status 2."""

import argparse
import sys
from typing import Callable, Optional, Sequence

from tflite_edge.errors import PatchError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are PatchErrors (one line, not a usage dump)."""

    def error(self, message):
        raise PatchError(message)


def run(command: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> int:
    """Runs `command(argv)`; any PatchError or OSError becomes one line and status 2."""
    try:
        return command(argv) or 0
    except PatchError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.strerror}: {e.filename}", file=sys.stderr)
    return 2
