"""Fetches Monocypher's two C files from its PyPI source release, checked by SHA-256.

Monocypher (https://monocypher.org, CC0 or BSD-2-Clause) is the small, audited
C crypto library the microcontroller recipe uses for Ed25519 verification
(docs/microcontrollers.md). It is not part of this repository: a firmware
takes it from its own release, and the tests take the same files from the
`pymonocypher` source archive on PyPI, pinned by hash:

    python tflite_edge/c/ed25519/fetch_monocypher.py DEST_FOLDER

Writes DEST_FOLDER/monocypher.c, monocypher.h and LICENSE.txt; does nothing when
they are already there with the expected hashes. Exit status 2, with one line,
when the download fails or does not match.
"""

import hashlib
import io
import os
import sys
import tarfile
import urllib.request

VERSION = "4.0.3.5"
URL = ("https://files.pythonhosted.org/packages/dc/cc/67a71aed2e4ba8134460a60f9b2fc89c5e7e6e"
       "7f8d44d7bd6c7474544152/pymonocypher-4.0.3.5.tar.gz")
ARCHIVE_SHA256 = "b6f96c4fa56212a7c13aee8fc27a89d7531b622ce8aabbd6e82a9d2e93071d71"
FILES = ("monocypher.c", "monocypher.h", "LICENSE.txt")


def _present(folder: str) -> bool:
    stamp = os.path.join(folder, "SHA256")
    if not os.path.exists(stamp) or not all(os.path.exists(os.path.join(folder, f))
                                            for f in FILES):
        return False
    with open(stamp) as f:
        return f.read().strip() == ARCHIVE_SHA256


def fetch(folder: str) -> None:
    """Downloads, checks and unpacks the files into `folder`."""
    if _present(folder):
        return
    with urllib.request.urlopen(URL, timeout=60) as response:
        data = response.read(16 << 20)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise ValueError(f"the archive's SHA-256 is {digest}, not the pinned {ARCHIVE_SHA256}")
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in FILES:
            member = archive.getmember(f"pymonocypher-{VERSION}/{name}")
            content = archive.extractfile(member).read()
            with open(os.path.join(folder, name), "wb") as f:
                f.write(content)
    with open(os.path.join(folder, "SHA256"), "w") as f:
        f.write(ARCHIVE_SHA256 + "\n")


def main(argv) -> int:
    if len(argv) != 2:
        print("usage: fetch_monocypher.py DEST_FOLDER", file=sys.stderr)
        return 2
    try:
        fetch(argv[1])
    except (OSError, ValueError, KeyError, tarfile.TarError) as e:
        print(f"error: cannot fetch Monocypher {VERSION}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
