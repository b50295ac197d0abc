"""Templates as stored: the JSON definition the API accepted, back as a Template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from tidings.email.templates import Content, Lookup, Template, Variant

if TYPE_CHECKING:  # the render process needs template_from, not the models
    from tidings.domain.models import StoredTemplate


def template_from(definition: Mapping[str, Any]) -> Template:
    """The template a definition (``name``, ``subject``, ``text``, ``html``, ``lookup``,
    ``variants``, as the API shows them) describes."""
    lookup = definition.get("lookup")
    return Template(
        name=definition["name"],
        content=Content(definition["subject"], definition["text"], definition.get("html")),
        lookup=None if lookup is None else Lookup(**lookup),
        variants={key: Variant(**v) for key, v in definition.get("variants", {}).items()},
    )


def template_of(stored: StoredTemplate) -> Template:
    return template_from(orjson.loads(stored.definition))
