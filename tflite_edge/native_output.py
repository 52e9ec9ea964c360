"""Quiets what TensorFlow Lite's native code prints on the process's stderr.

The converter's quantizer and the LiteRT interpreter write lines such as
"fully_quantize: 0, inference_type: 6, ..." and "INFO: Created TensorFlow
Lite XNNPACK delegate for CPU." straight to file descriptor 2, below any
Python or absl log level. Around those calls the descriptor points at
/dev/null unless `set_verbose(True)` (the command lines' `--verbose`).
Errors still arrive as Python exceptions with their messages.
"""

import contextlib
import os
import sys

_VERBOSE = [False]


def set_verbose(verbose: bool) -> None:
    """Whether native TensorFlow Lite output reaches stderr (default: no)."""
    _VERBOSE[0] = bool(verbose)


@contextlib.contextmanager
def muted():
    """Points file descriptor 2 at /dev/null for the block (unless verbose)."""
    if _VERBOSE[0]:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
