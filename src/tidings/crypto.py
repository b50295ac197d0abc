"""Encryption of the secrets the store keeps, under keys the operator holds.

A secret is sealed with AES-256-GCM (an authenticated cipher: a wrong key or a
changed byte is an error, never garbage) into self-describing text::

    enc:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>

The nonce is 96 random bits, fresh for every seal. The *key id* is a short
fingerprint of the key (not the key), so a value sealed under a key that was not
given is named precisely, and a rotation knows which values to seal again. The
*context* (the record's identity, e.g. ``endpoint:ep_1:secret``) is authenticated
with the value, so a sealed value copied into another row does not open there.

A :class:`Keyring` holds one or more keys: the first seals, every one opens. Keys
are given as base64url text of 32 bytes, comma-separated (``TIDINGS_ENCRYPTION_KEY``).
This module imports only the standard library, ``cryptography`` and the error tree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.exceptions import EncryptionKeyError

PREFIX = "enc:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_CHARS = 8


def generate_key() -> str:
    """A fresh key as text: 32 random bytes in base64url."""
    return _b64(os.urandom(KEY_BYTES))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def key_id_of(sealed: str) -> str:
    """The id of the key ``sealed`` was sealed under."""
    return sealed[len(PREFIX) :].split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    aead: AESGCM


class Keyring:
    """The keys that open the store's secrets; the first one seals."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("an encryption keyring needs at least one key")
        found: dict[str, _Key] = {}
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"an encryption key is {KEY_BYTES} bytes, not {len(key)}")
            found.setdefault(_fingerprint(key), _Key(_fingerprint(key), AESGCM(key)))
        self._keys = found
        self._sealing = found[_fingerprint(keys[0])]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Keys from ``text``: base64url of 32 bytes each, comma-separated, first one
        sealing. A key that does not parse is named by its place, never shown."""
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ValueError("no encryption key given")
        keys = []
        for place, part in enumerate(parts, 1):
            try:
                key = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"encryption key {place} of {len(parts)} is not {KEY_BYTES} bytes in "
                    "base64url (make one with `tidings generate-encryption-key`)"
                )
            keys.append(key)
        return cls(keys)

    @property
    def sealing_id(self) -> str:
        """The id of the key new values are sealed under."""
        return self._sealing.id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def seal(self, plaintext: str, context: str) -> str:
        """``plaintext`` sealed under the first key, bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._sealing.aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{PREFIX}{self._sealing.id}:{_b64(nonce + sealed)}"

    def open(self, sealed: str, context: str) -> str:
        """The plaintext of ``sealed``; :class:`EncryptionKeyError` if it was sealed under
        a key this keyring lacks, for another context, or was changed since."""
        if not is_sealed(sealed):
            raise EncryptionKeyError(f"{context} is not encrypted")
        key_id, _, body = sealed[len(PREFIX) :].partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise EncryptionKeyError(
                f"{context} is encrypted with key {key_id}, which is not among the keys given "
                f"({', '.join(self._keys)})"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return key.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise EncryptionKeyError(
                f"{context} does not open with key {key_id}: it was changed, or belongs "
                "to another record"
            ) from exc

    def __repr__(self) -> str:  # never the keys
        return f"Keyring(ids={list(self._keys)})"


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"tidings encryption key id\0" + key).hexdigest()[:KEY_ID_CHARS]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def key_file(path: Path) -> tuple[Keyring, bool]:
    """The keys kept in the file at ``path`` (same text as ``TIDINGS_ENCRYPTION_KEY``),
    made with one fresh key (mode 0600, never readable by others) if there is none;
    and whether it was made now."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Keyring.parse(path.read_text()), False
    with os.fdopen(fd, "w") as file:
        file.write(generate_key() + "\n")
        file.flush()
        os.fsync(file.fileno())
    return Keyring.parse(path.read_text()), True


__all__ = ["Keyring", "generate_key", "is_sealed", "key_file", "key_id_of"]
