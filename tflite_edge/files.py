"""Files a device writes and reads: atomic replacement, locks, bounded reads.

Shared by the applier, the device state and key generation, which is why it
sits apart from all three (none of them imports another to write a file).
"""

import contextlib
import os
import stat
import tempfile
import time
from typing import Callable, Optional

from tflite_edge import patch_format
from tflite_edge.errors import PatchError

# How long an apply waits for another apply of the same model to finish.
LOCK_TIMEOUT_SECONDS = 60.0


def _new_file_mode(path: str) -> int:
    """The mode a replaced file keeps, or what the umask gives a new one."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves the old or the new file."""
    write_atomic_stream(path, lambda write: write(data))


def write_atomic_stream(path: str, produce: Callable[[Callable[[bytes], object]], object],
                        before_replace: Optional[Callable[[], None]] = None):
    """Like `write_atomic`, for content produced piece by piece.

    `produce(write)` calls `write` with each piece; if it (or `before_replace`,
    called once the content is on disk, just before the rename) raises, the
    temporary file is removed and `path` is untouched. A symbolic link is
    followed: the file it points to is replaced and the link stays. The
    file keeps its mode (a new one gets the umask's). Returns what `produce`
    returned.
    """
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            produced = produce(f.write)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return produced


def read_patch_file(path: str) -> bytes:
    """A patch file's bytes, refusing one larger than the format can describe (inspection)."""
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise PatchError(f"cannot read patch {path}: {e.strerror}") from None
    if size > patch_format.MAX_PATCH_SIZE:
        raise PatchError(f"patch {path} is {size} bytes, more than a patch can be")
    return read_file(path, "patch")


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PatchError(f"cannot read {what} {path}: {e.strerror}") from None


@contextlib.contextmanager
def exclusive(path: str, timeout: float = LOCK_TIMEOUT_SECONDS):
    """Holds an advisory lock on `path` (created if missing) for the block.

    Two applies to one model would otherwise both verify the same base and
    both report success, leaving the state and the model disagreeing.
    """
    import fcntl  # pylint: disable=import-outside-toplevel
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PatchError(f"cannot create lock file {path}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PatchError(f"another update of this model is still running "
                                     f"(lock {path} held for {timeout:.0f} s)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)   # releases the lock


def refuse_dangling_link(path: str) -> None:
    """Refuses an output that is a symbolic link to nothing.

    A link to an existing file is followed (the file is replaced, the link
    stays), as in the C and JVM appliers; writing through a dangling link
    would create a file wherever it points.
    """
    if os.path.islink(path) and not os.path.exists(path):
        raise PatchError(f"{path} is a symbolic link to nothing ({os.readlink(path)}); "
                         "refusing to create its target")
