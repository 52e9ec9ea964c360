"""Ed25519 keys and signatures over a patch's header (`cryptography`).

A public key is checked when it is loaded, not only when a signature is: a
key that is not a canonical encoding of a curve point, or one of the eight
points of small order, is refused. With the identity point as the key, the
signature (R = identity, S = 0) verifies for every message.

Public keys travel as their raw 32 bytes (what the C and JVM appliers take);
a patch names the key that signed it by `patch_format.key_id`.
"""

from tflite_edge.errors import PatchError
from tflite_edge.files import write_atomic
from tflite_edge.keys import check_public_key
from tflite_edge.patch_format import key_id

def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives.asymmetric import ed25519  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise PatchError("signatures need the `cryptography` package "
                         "(pip install cryptography)") from None
    return serialization, ed25519


def generate_keypair(private_path: str, public_path: str) -> None:
    """Writes a new Ed25519 private key (PEM, PKCS#8) and its raw 32-byte public key."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    write_atomic(private_path, private)
    write_atomic(public_path, public)


class Signer:
    """Signs patch headers with one Ed25519 private key; names that key by its id.

    Attributes:
      public_key: the raw 32-byte public half.
      key_id: what a patch header carries to name it (`patch_format.key_id`).
    """

    def __init__(self, private_key):
        serialization, _ = _crypto()
        self._private = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public_key)

    def __call__(self, message: bytes) -> bytes:
        return self._private.sign(message)


def load_signer(path: str) -> Signer:
    """The `Signer` of a PEM private key file (as written by `keygen`)."""
    serialization, ed25519 = _crypto()
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise PatchError(f"cannot read private key {path}: {e.strerror}") from None
    except (ValueError, TypeError):
        raise PatchError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PatchError(f"{path} is not an Ed25519 private key")
    return Signer(key)


def load_public_key(path: str) -> bytes:
    """Loads and checks a raw 32-byte Ed25519 public key (as written by `keygen`).

    Raises:
      PatchError: no path (an empty --public_key is an error, never "no
        key"), an unreadable file, not 32 bytes, or a weak or malformed key.
    """
    if not path:
        raise PatchError("the public key path is empty (an unset variable?); refusing to "
                         "apply without the key")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PatchError(f"cannot read public key {path}: {e.strerror}") from None
    if len(raw) != 32:
        raise PatchError(f"{path} is not a raw 32-byte Ed25519 public key")
    try:
        check_public_key(raw)
    except PatchError as e:
        raise PatchError(f"{path}: {e}") from None
    return raw


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raises PatchError unless `signature` is `public_key`'s Ed25519 signature of `message`."""
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature  # pylint: disable=import-outside-toplevel
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), bytes(message))
    except InvalidSignature:
        raise PatchError("patch signature is not valid for this public key") from None
