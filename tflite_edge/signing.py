"""Ed25519 keys and signatures over a patch's header and body (`cryptography`)."""

from tflite_edge.errors import PatchError


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
    from tflite_edge.apply import write_atomic  # pylint: disable=import-outside-toplevel
    write_atomic(private_path, private)
    write_atomic(public_path, public)


def load_signer(path: str):
    """Returns sign(bytes) -> 64-byte signature, from a PEM private key file."""
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
    return key.sign


def load_public_key(path: str):
    """Loads a raw 32-byte Ed25519 public key (as written by `keygen`)."""
    _, ed25519 = _crypto()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PatchError(f"cannot read public key {path}: {e.strerror}") from None
    if len(raw) != 32:
        raise PatchError(f"{path} is not a raw 32-byte Ed25519 public key")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key, message: bytes, signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature  # pylint: disable=import-outside-toplevel
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise PatchError("patch signature is not valid for this public key") from None
