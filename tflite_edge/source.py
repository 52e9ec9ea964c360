"""A model's bytes, in memory or in a file, read a chunk at a time.

Creating and applying patches touch a model in three ways: parse its
FlatBuffers metadata, compare or copy its bytes in order, and hash it. A file
source does all three without reading the file into memory: the metadata is
parsed from a read-only memory map (only the pages holding it are touched),
and the bytes are read with `os.pread` one chunk at a time. So a 100 MB model
patches with a few MB of memory on a server or a phone.
"""

import hashlib
import mmap
import os
from typing import Iterator, Tuple, Union

from tflite_edge.errors import PatchError

# Big enough that per-chunk overhead vanishes, small enough for a phone; a
# multiple of 8, so no element of any patchable type straddles two chunks.
CHUNK = 1 << 18


class Source:
    """Random, chunked access to a model's bytes.

    Build one with `Source.of(data)` for bytes in memory, or `Source.open(path)`
    (a context manager) for a file.
    """

    def __init__(self, size: int, data=None, fd: int = -1, path: str = ""):
        self.size = size
        self._data = data      # bytes, or a memory map of the file (parsing only)
        self._fd = fd
        self.path = path
        self._sha256 = None

    @classmethod
    def of(cls, data: Union[bytes, bytearray, memoryview, "Source"]) -> "Source":
        if isinstance(data, Source):
            return data
        data = data if isinstance(data, bytes) else bytes(data)
        return cls(len(data), data)

    @classmethod
    def open(cls, path: str, what: str = "model") -> "Source":
        """Opens a file read-only; raises PatchError with one line if it cannot."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise PatchError(f"cannot read {what} {path}: {e.strerror}") from None
        size = os.fstat(fd).st_size
        data = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
        return cls(size, data, fd, path)

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            try:
                self._data.close()
            except BufferError:
                # A parsed view (say, one held by an exception's traceback)
                # still points into the map; it is unmapped once that view goes.
                pass
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def buffer(self):
        """The whole file as a read-only buffer, for FlatBuffers parsing."""
        return self._data

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer only past the end of the model)."""
        if self._fd < 0:
            return self._data[offset:offset + length]
        try:
            return os.pread(self._fd, length, offset)
        except OSError as e:
            raise PatchError(f"cannot read {self.path}: {e.strerror}") from None

    def chunks(self, start: int = 0, end: int = -1,
               size: int = 0) -> Iterator[Tuple[int, bytes]]:
        """(offset, bytes) of [start, end) in order, `size` (default CHUNK) bytes at a time."""
        end = self.size if end < 0 else end
        size = size or CHUNK
        for offset in range(start, end, size):
            yield offset, self.read(offset, min(size, end - offset))

    def sha256(self) -> bytes:
        """The SHA-256 of the model (computed once: a source is read-only)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for _, chunk in self.chunks():
                digest.update(chunk)
            self._sha256 = digest.digest()
        return self._sha256
