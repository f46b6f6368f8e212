"""Ed25519 keys for signing records: generate, load from the forms hosts keep them in, and write PEM.

`cryptography` is imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: protect the file)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(key: Any) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, PEM, raw 32 bytes, hex/base64 text, or a file path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    data = _key_bytes(key)
    if b"-----BEGIN" in data:
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ConfigurationError("the signing key must be an Ed25519 private key")
        return loaded
    return Ed25519PrivateKey.from_private_bytes(_raw32(data, "private"))


def load_public_key(key: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM, OpenSSH line, raw 32 bytes, hex/base64 text,
    or a file path holding one of these."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    data = _key_bytes(key)
    if b"-----BEGIN" in data:
        loaded: Any = serialization.load_pem_public_key(data)
    elif data.strip().startswith(b"ssh-ed25519 "):
        loaded = serialization.load_ssh_public_key(data.strip())
    else:
        loaded = Ed25519PublicKey.from_public_bytes(_raw32(data, "public"))
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigurationError("the public key must be an Ed25519 key")
    return loaded


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, os.PathLike):
        return Path(key).read_bytes()
    if isinstance(key, str):
        text = key.strip()
        if "-----BEGIN" not in text and not text.startswith("ssh-") and len(text) < 4096 and Path(text).is_file():
            return Path(text).read_bytes()
        return text.encode("ascii")
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    raise TypeError(f"cannot use {type(key).__name__} as an Ed25519 key")


def _raw32(data: bytes, which: str) -> bytes:
    if len(data) == 32:
        return data
    text = data.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            raw = decode(text.decode("ascii"))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(raw) == 32:
            return raw
    raise ConfigurationError(f"cannot read an Ed25519 {which} key: use PEM, 32 raw bytes, or their hex/base64")
