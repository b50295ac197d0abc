"""A tenant's email templates: what they may contain, and how they render.

A :class:`Template` has a default :class:`Content` (a subject, a text body and an
optional html body), an optional :class:`Lookup` whose answer picks a variant, and
the :class:`Variant` s, each overriding any of the three parts of the default. Errors
name a part the way the API spells it: ``subject``, ``text``, ``html``,
``variants.<key>.text``, ``lookup.url``, ``lookup.select``, ``lookup.timeout_ms``.

The rules:

* **Sandboxed.** Every part is Jinja2 run in an
  :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute starting with
  ``_`` (so no ``''.__class__``, no ``cycler.__init__.__globals__``), no ``str.format``
  way round that, no mutating a list or dict handed in. The sandbox decides while
  rendering, so :func:`check` cannot see a violation; :func:`render` turns it into
  :exc:`~tidings.exceptions.InvalidTemplate` and nothing is sent.
* **Self-contained.** A template cannot extend, include or import another: there is
  no other template to reach, and :func:`check` says so instead of every send failing.
* **Strict.** An undefined value is an error, never an empty string: :func:`render`
  raises :exc:`~tidings.exceptions.MissingField` rather than return a half-rendered
  email. :func:`fields_used` lists every top-level name any part reads (every variant
  and the lookup URL included; Jinja's own globals such as ``range`` are not fields),
  so the API can refuse a send that lacks one before anything renders.
* **Escaped where it matters.** ``html`` renders with autoescape on; ``subject`` and
  ``text`` are plain text and render values as given. A template keeps its trailing
  newline (Jinja would drop it): the body sent is the body written.
* **A one-line subject.** The rendered subject is stripped and every line break in it
  (CR, LF, CRLF and the other separators :meth:`str.splitlines` knows) becomes a
  space, so no value can start a header of its own.
* **An encoded lookup URL.** In the lookup URL every ``{{ ... }}`` output is
  percent-encoded (``urllib.parse.quote(value, safe="")``) by the environment's
  ``finalize`` hook: a value fills in a query parameter, it can never change the
  host or the path or add a parameter, and authors need no ``|urlencode``.
* **A lookup within bounds.** ``select`` is a JSON Pointer (RFC 6901: ``""`` or
  ``/``-separated tokens, ``~`` only as ``~0`` or ``~1``); ``timeout_ms`` is
  :data:`MIN_TIMEOUT_MS` to :data:`MAX_TIMEOUT_MS`. Another module evaluates both.
* **Bounded.** A part renders to at most :data:`~tidings.email.bounds.MAX_RENDERED`
  characters, and ``*`` and ``**`` refuse to build a string, list or integer far
  beyond that. Time and memory are bounded where this module runs: tidings compiles
  and renders only in a child process (:mod:`tidings.email.renderer`); there a
  :exc:`MemoryError` or the deadline's :exc:`~tidings.email.bounds.Overtime` becomes
  :exc:`~tidings.email.bounds.BoundExceeded` naming the part.
* **Compiled once.** Each distinct (source, kind) is parsed and compiled once and kept,
  with the names it uses, in a bounded LRU cache of :data:`COMPILED_CACHE_SIZE` entries.

Which error: :exc:`~tidings.exceptions.InvalidTemplate` when the template is at fault
(syntax, too deeply nested, a sandbox violation, a bad lookup, an empty subject or
text), :exc:`~tidings.exceptions.MissingField` when a value was not given, and
:exc:`~tidings.exceptions.InvalidInput` for anything else that fails while rendering
(e.g. ``{{ name|round }}`` when ``name`` is a string).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tidings.email.bounds import MAX_RENDERED, Bound, BoundExceeded, Overtime
from tidings.exceptions import InvalidInput, InvalidTemplate, MissingField

__all__ = [
    "COMPILED_CACHE_SIZE",
    "MAX_TIMEOUT_MS",
    "MIN_TIMEOUT_MS",
    "Content",
    "Lookup",
    "Template",
    "Variant",
    "check",
    "fields_used",
    "render",
    "render_lookup_url",
]

MIN_TIMEOUT_MS: Final = 1
"""The shortest lookup timeout a template may ask for, in milliseconds."""

MAX_TIMEOUT_MS: Final = 10_000
MAX_REPEAT: Final = 100_000  # the longest string or list ``*`` may build
MAX_EXPONENT: Final = 1_000
MAX_POWER_BITS: Final = 100_000  # the largest integer ``**`` or ``*`` may build, in bits
"""The longest lookup timeout a template may ask for, in milliseconds."""

COMPILED_CACHE_SIZE: Final = 1024
"""How many compiled (source, kind) pairs are kept; the least recently used goes first."""

_JSON_POINTER = re.compile(r"(?:/(?:[^~/]|~[01])*)*")
"""RFC 6901: zero or more ``/``-prefixed tokens, ``~`` escaped as ``~0`` or ``~1``."""


@dataclass(frozen=True, slots=True)
class Content:
    """What an email says: the rendered result, or a template's default sources."""

    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Variant:
    """Overrides of a template's default content; ``None`` keeps the default's part."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Lookup:
    """An HTTP GET made before sending, whose answer picks the variant."""

    url: str
    """A Jinja template itself (``"...?email={{ to }}"``); values are URL-encoded."""
    timeout_ms: int
    select: str
    """A JSON Pointer into the JSON answer; the value found, as a string, is the variant key."""


@dataclass(frozen=True, slots=True)
class Template:
    """A tenant's email template, as the API accepted it (see :func:`check`)."""

    name: str
    content: Content
    lookup: Lookup | None = None
    variants: Mapping[str, Variant] = field(default_factory=dict)
    """Keyed by the looked-up value as a string."""


class _Kind(enum.Enum):
    """Which environment a source compiles in."""

    TEXT = "text"
    HTML = "html"
    URL = "url"


@dataclass(frozen=True, slots=True)
class _Part:
    """One source of a template, with the name errors give it."""

    field_name: str
    """``"subject"``, ``"text"``, ``"html"`` or ``"url"``."""
    name: str
    """Where it is in the template: ``"text"``, ``"variants.true.html"``, ``"lookup.url"``."""
    source: str
    kind: _Kind


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: jinja2.Template
    fields: frozenset[str]


def _url_component(value: object) -> str:
    """The ``finalize`` hook of the URL environment: every output, percent-encoded."""
    return quote(str(value), safe="")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` bounded: ``{{ 'a' * 10**9 }}`` would otherwise
    build a gigabyte, and a product or power of integers can grow without end. These
    give a clear reason early; what holds every other way to allocate or spin is the
    render process (see :mod:`tidings.email.renderer`). (Sandboxed operators are never
    folded at compile.)"""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _number(right) and _number(left):
            bits = max(abs(int(left)), 2).bit_length() * abs(right)
            if abs(right) > MAX_EXPONENT or bits > MAX_POWER_BITS:
                raise SecurityError("a power that large is not allowed")
        if (
            operator == "*"
            and _integer(left)
            and _integer(right)
            and abs(left).bit_length() + abs(right).bit_length() > MAX_POWER_BITS
        ):
            raise SecurityError("a product that large is not allowed")
        if operator == "*":
            size, times = (left, right) if _number(right) else (right, left)
            if _number(times) and hasattr(size, "__len__") and len(size) * times > MAX_REPEAT:
                raise SecurityError(f"a repetition longer than {MAX_REPEAT} is not allowed")
        return super().call_binop(context, operator, left, right)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _environment(kind: _Kind) -> ImmutableSandboxedEnvironment:
    environment = _BoundedSandbox(
        undefined=StrictUndefined,
        autoescape=kind is _Kind.HTML,
        finalize=_url_component if kind is _Kind.URL else None,
        keep_trailing_newline=kind is not _Kind.URL,
        auto_reload=False,
    )
    del environment.globals["lipsum"]  # generates text by the kilobyte: no use in an email
    return environment


_ENVIRONMENTS: Final = MappingProxyType({kind: _environment(kind) for kind in _Kind})


def check(template: Template) -> None:
    """Refuse a template that could never render, raising :exc:`InvalidTemplate`.

    Compiles every part (the default's, each variant's and the lookup URL); a syntax
    error reads ``"variants.true.text: line 2: unexpected '}'"``. Also refuses an empty
    (or blank) subject, text or lookup URL, a ``select`` that is not a JSON Pointer and
    a ``timeout_ms`` outside :data:`MIN_TIMEOUT_MS`..:data:`MAX_TIMEOUT_MS`. Sandbox
    violations only show when rendering; see :func:`render`.
    """
    for part in _parts(template):
        if part.kind is not _Kind.HTML and not part.source.strip():
            raise InvalidTemplate(f"{part.name}: must not be empty")
        _compile(part)
    if template.lookup is not None:
        _check_lookup(template.lookup)


def fields_used(template: Template) -> frozenset[str]:
    """Every top-level value any part of ``template`` reads: default, variants, lookup URL.

    Names a template sets itself (``{% set %}``, loop variables, macro arguments) and
    Jinja's globals (``range``, ``cycler``, ...) are not fields. Raises
    :exc:`InvalidTemplate` if a part does not compile.
    """
    used: frozenset[str] = frozenset()
    for part in _parts(template):
        used |= _compile(part).fields
    return used


def render(template: Template, variant: str | None, values: Mapping[str, Any]) -> Content:
    """The content of ``variant`` rendered with ``values``.

    ``None``, or a key not in ``template.variants``, means the default content; a
    variant's ``None`` parts are the default's. Raises :exc:`MissingField` for a value
    not given, :exc:`InvalidTemplate` for a sandbox violation or a part that does not
    compile, and :exc:`InvalidInput` for any other failure; each names the part.
    """
    parts = _chosen(template, variant)
    html = parts.get("html")
    return Content(
        subject=_one_line(_render(parts["subject"], values)),
        text=_render(parts["text"], values),
        html=None if html is None else _render(html, values),
    )


def render_lookup_url(lookup: Lookup, values: Mapping[str, Any]) -> str:
    """``lookup.url`` with ``values`` filled in, each output percent-encoded.

    ``{{ to }}`` with ``to = "a+b@example.com"`` gives ``a%2Bb%40example.com``. Raises
    like :func:`render`.
    """
    return _render(_Part("url", "lookup.url", lookup.url, _Kind.URL), values)


def _parts(template: Template) -> Iterator[_Part]:
    """Every source in ``template``: the default's, each variant's, then the lookup URL."""
    yield from _content_parts("", template.content)
    for key, variant in template.variants.items():
        yield from _content_parts(f"variants.{key}.", variant)
    if template.lookup is not None:
        yield _Part("url", "lookup.url", template.lookup.url, _Kind.URL)


def _content_parts(prefix: str, content: Content | Variant) -> Iterator[_Part]:
    """The subject, text and html of ``content`` that are set, named ``prefix + field``."""
    sources = (
        ("subject", content.subject, _Kind.TEXT),
        ("text", content.text, _Kind.TEXT),
        ("html", content.html, _Kind.HTML),
    )
    for field_name, source, kind in sources:
        if source is not None:
            yield _Part(field_name, prefix + field_name, source, kind)


def _chosen(template: Template, key: str | None) -> dict[str, _Part]:
    """The parts ``key`` renders, by field: the default's, overridden by the variant's."""
    parts = {part.field_name: part for part in _content_parts("", template.content)}
    variant = None if key is None else template.variants.get(key)
    if variant is not None:
        parts.update(
            (part.field_name, part) for part in _content_parts(f"variants.{key}.", variant)
        )
    return parts


def _check_lookup(lookup: Lookup) -> None:
    if not _JSON_POINTER.fullmatch(lookup.select):
        raise InvalidTemplate(
            f"lookup.select: {lookup.select!r} is not a JSON Pointer "
            '(RFC 6901: "" or "/"-separated tokens, "~" only as "~0" or "~1")'
        )
    if not MIN_TIMEOUT_MS <= lookup.timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidTemplate(
            f"lookup.timeout_ms: must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}, "
            f"got {lookup.timeout_ms}"
        )


def _compile(part: _Part) -> _Compiled:
    """``part`` compiled (from the cache when it can be), or :exc:`InvalidTemplate`."""
    try:
        return _compiled(part.source, part.kind)
    except MemoryError:
        raise BoundExceeded.of(Bound.MEMORY, part.name, "compile") from None
    except Overtime:
        raise BoundExceeded.of(Bound.TIME, part.name, "compile") from None
    except TemplateSyntaxError as exc:
        raise InvalidTemplate(f"{part.name}: line {exc.lineno}: {exc.message}") from exc
    except (RecursionError, SyntaxError) as exc:
        # Jinja's parser recurses per nesting level, and Python refuses the code Jinja
        # generates for more than a handful of nested blocks ("too many statically
        # nested blocks"): either way the template is too deep, not the service broken.
        raise InvalidTemplate(f"{part.name}: too deeply nested") from exc


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compiled(source: str, kind: _Kind) -> _Compiled:
    """Parse and compile ``source`` once; Jinja's errors propagate (and are not cached)."""
    environment = _ENVIRONMENTS[kind]
    tree = environment.parse(source)
    other = next(
        tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)), None
    )
    if other is not None:
        raise TemplateSyntaxError(
            "a template cannot extend, include or import another", other.lineno
        )
    fields = frozenset(meta.find_undeclared_variables(tree))
    return _Compiled(environment.from_string(tree), fields)


def compiled_count() -> int:
    """How many compiled sources are kept (see :data:`COMPILED_CACHE_SIZE`)."""
    return _compiled.cache_info().currsize


def forget_compiled() -> None:
    """Drop every compiled source, to free their memory."""
    _compiled.cache_clear()


def _render(part: _Part, values: Mapping[str, Any]) -> str:
    """``part`` rendered with ``values``, Jinja's and Python's errors turned into ours."""
    template = _compile(part).template
    try:
        return _bounded(template.generate(values), part.name)
    except MemoryError:
        raise BoundExceeded.of(Bound.MEMORY, part.name) from None
    except Overtime:
        raise BoundExceeded.of(Bound.TIME, part.name) from None
    except InvalidTemplate:
        raise
    except SecurityError as exc:
        raise InvalidTemplate(f"{part.name}: {exc}") from exc
    except UndefinedError as exc:
        raise MissingField(f"{part.name}: {exc}") from exc
    except Exception as exc:
        # A tenant's template can fail in any way its filters and operators can (a
        # TypeError from |round on a string, ZeroDivisionError, RecursionError from a
        # recursive macro, ...): all of them are the request's fault, none a 500.
        raise InvalidInput(f"{part.name}: {str(exc) or type(exc).__name__}") from exc


def _bounded(chunks: Iterator[str], part: str) -> str:
    """The rendered text, refused once it passes :data:`MAX_RENDERED` characters."""
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED:
            raise BoundExceeded.of(Bound.SIZE, part)
        out.append(chunk)
    return "".join(out)


def _one_line(subject: str) -> str:
    """``subject`` stripped, with every line break (as :meth:`str.splitlines` sees them) a space."""
    return " ".join(subject.splitlines()).strip()
