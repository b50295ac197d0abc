"""Sealing secrets: AES-256-GCM bound to a record, under keys named by fingerprint."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from tidings.config import Settings
from tidings.crypto import Keyring, generate_key, is_sealed, key_file, key_id_of
from tidings.exceptions import EncryptionKeyError

SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LW9mLWFu"
HERE = "endpoint:ep_1:secret"


def test_a_sealed_secret_opens_to_itself_and_does_not_show_it() -> None:
    keyring = Keyring.parse(generate_key())

    sealed = keyring.seal(SECRET, HERE)

    assert is_sealed(sealed)
    assert SECRET not in sealed
    assert key_id_of(sealed) == keyring.sealing_id
    assert keyring.open(sealed, HERE) == SECRET
    assert keyring.seal(SECRET, HERE) != sealed  # a fresh nonce every time


def test_a_sealed_secret_moved_to_another_record_does_not_open() -> None:
    keyring = Keyring.parse(generate_key())
    sealed = keyring.seal(SECRET, HERE)

    with pytest.raises(EncryptionKeyError, match="endpoint:ep_2:secret does not open"):
        keyring.open(sealed, "endpoint:ep_2:secret")
    with pytest.raises(EncryptionKeyError, match="previous_secret does not open"):
        keyring.open(sealed, "endpoint:ep_1:previous_secret")


def test_a_changed_byte_is_an_error_never_garbage() -> None:
    keyring = Keyring.parse(generate_key())
    sealed = keyring.seal(SECRET, HERE)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]

    with pytest.raises(EncryptionKeyError, match="was changed"):
        keyring.open(flipped, HERE)


def test_a_secret_sealed_under_a_key_not_given_names_both_key_ids() -> None:
    old, new = generate_key(), generate_key()
    sealed = Keyring.parse(old).seal(SECRET, HERE)
    other = Keyring.parse(new)

    with pytest.raises(EncryptionKeyError) as caught:
        other.open(sealed, HERE)

    assert key_id_of(sealed) in caught.value.detail
    assert other.sealing_id in caught.value.detail
    assert old not in caught.value.detail
    assert new not in caught.value.detail


def test_the_first_key_seals_and_every_key_opens() -> None:
    old, new = generate_key(), generate_key()
    sealed_before = Keyring.parse(old).seal(SECRET, HERE)
    rotating = Keyring.parse(f"{new}, {old}")

    assert rotating.open(sealed_before, HERE) == SECRET
    assert key_id_of(rotating.seal(SECRET, HERE)) == Keyring.parse(new).sealing_id
    assert rotating.ids == (Keyring.parse(new).sealing_id, Keyring.parse(old).sealing_id)


@pytest.mark.parametrize("text", ["", "not-base64!", "c2hvcnQ", generate_key() + ",c2hvcnQ"])
def test_a_bad_key_setting_is_refused_without_showing_it(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(encryption_key=text)  # type: ignore[arg-type]

    message = str(caught.value)
    assert "encryption_key" in message
    for part in filter(None, text.split(",")):
        assert part not in message


def test_the_key_is_a_secret_setting_never_echoed() -> None:
    key = generate_key()
    settings = Settings(encryption_key=key)  # type: ignore[arg-type]

    assert key not in repr(settings)
    assert key not in str(settings.model_dump())
    assert key not in repr(Keyring.parse(key))


def test_a_key_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "tidings.db.key"

    made, created = key_file(path)
    again, created_again = key_file(path)

    assert created
    assert not created_again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert made.sealing_id == again.sealing_id
