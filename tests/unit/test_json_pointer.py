"""JSON Pointer (RFC 6901), as the email lookup evaluates it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.channels.lookup import parse_pointer, resolve_pointer

# The example document of RFC 6901, section 5.
RFC_DOCUMENT: dict[str, Any] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}

quick = settings(database=None, max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", RFC_DOCUMENT),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/foo/1", "baz"),
        ("/", 0),
        ("/a~1b", 1),
        ("/c%d", 2),
        ("/e^f", 3),
        ("/g|h", 4),
        ("/i\\j", 5),
        ('/k"l', 6),
        ("/ ", 7),
        ("/m~0n", 8),
    ],
)
def test_the_rfc_examples(pointer: str, expected: object) -> None:
    assert resolve_pointer(RFC_DOCUMENT, pointer) == expected


def test_tilde_one_is_unescaped_before_tilde_zero() -> None:
    # "~01" is "~" then "1", i.e. the key "~1"; never "/".
    assert parse_pointer("/~01") == ("~1",)
    assert resolve_pointer({"~1": "tilde-one", "/": "slash"}, "/~01") == "tilde-one"


def test_nested_objects_and_arrays() -> None:
    document = {"plans": [{"tier": "gold"}, {"tier": "silver"}], "0": "zero"}
    assert resolve_pointer(document, "/plans/1/tier") == "silver"
    assert resolve_pointer(document, "/0") == "zero"  # a digit key in an object is a key


def test_tokens_are_accepted_as_well_as_text() -> None:
    assert resolve_pointer({"a": {"b": 1}}, ("a", "b")) == 1


@pytest.mark.parametrize(
    "pointer",
    [
        "/foo/01",  # leading zero
        "/foo/00",
        "/foo/-",  # the position after the end
        "/foo/2",
        "/foo/-1",
        "/foo/+1",
        "/foo/ 1",
        "/foo/1 ",
        "/foo/\u0661",  # ARABIC-INDIC DIGIT ONE: a digit, but not a decimal index here
        "/foo/" + "9" * 5000,  # longer than int() accepts
        "/foo/0/x",  # inside a string
        "/a~1b/x",  # inside a number
        "/missing",
        "/A~1B",  # keys are case-sensitive
    ],
)
def test_nothing_there(pointer: str) -> None:
    with pytest.raises(LookupError):
        resolve_pointer(RFC_DOCUMENT, pointer)


def test_null_is_a_value_not_an_absence() -> None:
    assert resolve_pointer({"a": None}, "/a") is None


@pytest.mark.parametrize("pointer", ["foo", "#/foo", "/~2", "/a~", "/~", "/m~n"])
def test_malformed_pointers_are_refused(pointer: str) -> None:
    with pytest.raises(ValueError, match="is not a JSON Pointer"):
        parse_pointer(pointer)
    with pytest.raises(ValueError, match="is not a JSON Pointer"):
        resolve_pointer(RFC_DOCUMENT, pointer)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


@quick
@given(keys=st.lists(st.text(), min_size=1, max_size=5))
def test_any_escaped_path_finds_its_value(keys: list[str]) -> None:
    document: object = "leaf"
    for key in reversed(keys):
        document = {key: document}
    pointer = "".join("/" + _escape(key) for key in keys)
    assert parse_pointer(pointer) == tuple(keys)
    assert resolve_pointer(document, pointer) == "leaf"
