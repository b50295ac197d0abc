"""Email templates: compiling, the sandbox, strict values, escaping and the lookup URL."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from support.processes import children
from tidings.email.bounds import (
    MAX_RENDERED,
    RENDER_DEADLINE_S,
    RENDER_MEMORY_MB,
    Bound,
    BoundExceeded,
)
from tidings.email.renderer import Renderer
from tidings.email.templates import (
    MAX_TIMEOUT_MS,
    Content,
    Lookup,
    Template,
    Variant,
    check,
    fields_used,
    render,
    render_lookup_url,
)
from tidings.exceptions import InvalidInput, InvalidTemplate, MissingField

# No example database: these tests must not write into the working tree.
quick = settings(database=None, max_examples=200, deadline=None)

LOOKUP = Lookup(
    url="http://crm.internal/supporters?email={{ to }}", timeout_ms=2000, select="/subscribed"
)
CONFIRM = Template(
    name="confirm",
    content=Content(
        subject="Please confirm, {{ name }}",
        text="Two buttons: confirm and subscribe, or confirm only. {{ name }}",
        html="<p>optional {{ name }}</p>",
    ),
    lookup=LOOKUP,
    variants={"true": Variant(text="One button: confirm. {{ name }}")},
)
VALUES = {"name": "Ada", "to": "ada@example.com"}


def _plain(text: str, *, subject: str = "Hello", html: str | None = None) -> Template:
    return Template(name="t", content=Content(subject=subject, text=text, html=html))


def test_the_example_renders_its_default_content() -> None:
    check(CONFIRM)

    assert render(CONFIRM, None, VALUES) == Content(
        subject="Please confirm, Ada",
        text="Two buttons: confirm and subscribe, or confirm only. Ada",
        html="<p>optional Ada</p>",
    )


def test_a_variant_overrides_only_the_parts_it_sets() -> None:
    assert render(CONFIRM, "true", VALUES) == Content(
        subject="Please confirm, Ada",
        text="One button: confirm. Ada",
        html="<p>optional Ada</p>",
    )


def test_a_variant_can_add_html_the_default_lacks() -> None:
    template = Template(
        name="t",
        content=Content(subject="Hi", text="plain"),
        variants={"vip": Variant(html="<b>{{ name }}</b>")},
    )

    assert render(template, "vip", VALUES) == Content("Hi", "plain", "<b>Ada</b>")
    assert render(template, None, VALUES).html is None


@pytest.mark.parametrize("key", ["false", "True", "", None])
def test_a_key_not_among_the_variants_renders_the_default(key: str | None) -> None:
    assert render(CONFIRM, key, VALUES) == render(CONFIRM, None, VALUES)
    assert render(CONFIRM, key, VALUES).text.startswith("Two buttons")


@pytest.mark.parametrize(
    ("template", "part", "line"),
    [
        pytest.param(_plain("Hello,\n{{ name }\nBye"), "text", 2, id="text"),
        pytest.param(
            dataclasses.replace(
                CONFIRM, variants={"true": Variant(html="<p>\n<b>\n{{ name | }}</b>")}
            ),
            "variants.true.html",
            3,
            id="variant-html",
        ),
        pytest.param(
            dataclasses.replace(
                CONFIRM,
                lookup=dataclasses.replace(LOOKUP, url="http://crm/?\nemail={{ to ]}"),
            ),
            "lookup.url",
            2,
            id="lookup-url",
        ),
        pytest.param(_plain("ok", subject="a\n{% if x %}b"), "subject", 2, id="unclosed-block"),
    ],
)
def test_a_syntax_error_names_the_part_and_the_line(
    template: Template, part: str, line: int
) -> None:
    with pytest.raises(InvalidTemplate, match=rf"^{part}: line {line}: \S") as raised:
        check(template)

    with pytest.raises(InvalidTemplate) as again:
        fields_used(template)
    assert again.value.detail == raised.value.detail


def test_the_example_error_message_reads_as_documented() -> None:
    template = dataclasses.replace(CONFIRM, variants={"true": Variant(text="One\n{{ name }")})

    with pytest.raises(InvalidTemplate) as raised:
        check(template)

    assert raised.value.detail == "variants.true.text: line 2: unexpected '}'"


@pytest.mark.parametrize(
    "source",
    [
        "{% extends 'base' %}",
        "a\n{% include 'other' %}",
        "{% import 'macros' as m %}",
        "{% from 'macros' import m %}",
    ],
)
def test_a_template_cannot_reach_another(source: str) -> None:
    with pytest.raises(InvalidTemplate, match=r"^text: line \d: .*extend, include or import"):
        check(_plain(source))


@pytest.mark.parametrize(
    "source",
    [
        "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
        "{% for a in b %}" * 25 + "{% endfor %}" * 25,
    ],
    ids=["deep-expression", "deep-blocks"],
)
def test_a_template_nested_too_deep_is_invalid_not_a_crash(source: str) -> None:
    with pytest.raises(InvalidTemplate, match=r"^text: too deeply nested"):
        check(_plain(source))


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format(name) }}",
    "{{ name.__class__ ~ '' }}",
    "{% if ''.__class__ %}leak{% endif %}",
    "{% for c in ''.__class__.__mro__ %}{{ c }}{% endfor %}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_the_sandbox_refuses_python_internals_at_render(source: str) -> None:
    template = _plain(f"before {source} after")
    check(template)  # it compiles: the sandbox decides while rendering

    with pytest.raises(InvalidTemplate, match=r"^text: .*unsafe"):
        render(template, None, VALUES)


def test_the_sandbox_refuses_mutating_a_value() -> None:
    template = _plain("{{ items.append(1) }}{{ items }}")
    items = [0]

    with pytest.raises(InvalidTemplate, match=r"unsafe"):
        render(template, None, {"items": items})
    assert items == [0]


@pytest.mark.parametrize("field_name", ["subject", "html"])
def test_the_sandbox_guards_every_part(field_name: str) -> None:
    content = dataclasses.replace(CONFIRM.content, **{field_name: ESCAPES[1]})
    template = dataclasses.replace(CONFIRM, content=content)

    with pytest.raises(InvalidTemplate, match=rf"^{field_name}: .*unsafe"):
        render(template, None, VALUES)


def test_the_sandbox_guards_the_lookup_url() -> None:
    with pytest.raises(InvalidTemplate, match=r"^lookup.url: .*unsafe"):
        render_lookup_url(Lookup(url="http://x/?q=" + ESCAPES[1], timeout_ms=1, select=""), {})


def test_a_missing_value_is_a_missing_field_naming_it() -> None:
    with pytest.raises(MissingField, match=r"^subject: .*'name'"):
        render(CONFIRM, None, {"to": "ada@example.com"})


def test_a_missing_value_in_a_variant_names_the_variant_part() -> None:
    template = dataclasses.replace(
        CONFIRM, variants={"true": Variant(text="{{ name }} {{ coupon }}")}
    )

    assert render(template, None, VALUES).text.startswith("Two buttons")
    with pytest.raises(MissingField, match=r"^variants\.true\.text: .*'coupon'"):
        render(template, "true", VALUES)


def test_a_missing_value_in_the_lookup_url_is_a_missing_field() -> None:
    with pytest.raises(MissingField, match=r"^lookup\.url: .*'to'"):
        render_lookup_url(LOOKUP, {"name": "Ada"})


def test_fields_used_covers_the_default_every_variant_and_the_lookup_url() -> None:
    template = Template(
        name="t",
        content=Content(
            subject="{{ greeting }}",
            text="{% set local = 1 %}{{ local }}{% for item in items %}{{ item }}{% endfor %}",
            html="{{ range(2)|join }}{{ footer }}",
        ),
        lookup=Lookup(url="http://crm/?email={{ to }}", timeout_ms=100, select=""),
        variants={
            "a": Variant(subject="{{ only_a }}"),
            "b": Variant(html="{{ only_b.name }}"),
        },
    )

    assert fields_used(template) == {"greeting", "items", "footer", "to", "only_a", "only_b"}
    assert fields_used(CONFIRM) == {"name", "to"}


def test_html_escapes_values_and_text_does_not() -> None:
    template = _plain("{{ name }}", html="<p>{{ name }}</p>")

    content = render(template, None, {"name": "<script>alert('x')</script> & co"})

    assert content.text == "<script>alert('x')</script> & co"
    assert content.html is not None
    assert "<script>" not in content.html
    assert content.html == "<p>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co</p>"


def test_html_markup_the_author_wrote_is_kept() -> None:
    content = render(_plain("x", html="<b>{{ name }}</b>\n"), None, {"name": "a<b"})

    assert content.html == "<b>a&lt;b</b>\n"


def test_a_body_keeps_its_trailing_newline() -> None:
    assert render(_plain("Hello {{ name }}\n"), None, VALUES).text == "Hello Ada\n"


@pytest.mark.parametrize(
    "value", ["Ada\r\nBcc: evil@example.com", "Ada\nBcc: x", "Ada\rBcc: x", "Ada\u2028Bcc: x"]
)
def test_the_subject_comes_out_on_one_line(value: str) -> None:
    subject = render(CONFIRM, None, {"name": value}).subject

    assert "\r" not in subject
    assert "\n" not in subject
    assert subject.splitlines() == [subject]
    assert subject == "Please confirm, Ada Bcc: " + value.rsplit("Bcc: ", 1)[1]


def test_the_subject_is_stripped() -> None:
    template = _plain("x", subject="  {{ name }}\n")

    assert render(template, None, {"name": "\n Ada \r\n"}).subject == "Ada"


def test_a_rendering_failure_is_invalid_input_naming_the_part() -> None:
    template = dataclasses.replace(CONFIRM, variants={"true": Variant(html="{{ name|round }}")})

    with pytest.raises(InvalidInput, match=r"^variants\.true\.html: \S") as raised:
        render(template, "true", VALUES)
    assert type(raised.value) is InvalidInput


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("a+b@example.com", "a%2Bb%40example.com"),
        ("x & y/z", "x%20%26%20y%2Fz"),
        ("a=b?c#d", "a%3Db%3Fc%23d"),
        ("é", "%C3%A9"),
    ],
)
def test_the_lookup_url_encodes_every_value(value: str, encoded: str) -> None:
    url = render_lookup_url(LOOKUP, {"to": value})

    assert url == "http://crm.internal/supporters?email=" + encoded


def test_a_value_cannot_change_the_lookup_host() -> None:
    lookup = Lookup(url="http://{{ host }}/x?{{ query }}", timeout_ms=1, select="")

    url = render_lookup_url(lookup, {"host": "evil.example/steal?", "query": "a=1&b=2"})

    assert url == "http://evil.example%2Fsteal%3F/x?a%3D1%26b%3D2"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param(
            dataclasses.replace(CONFIRM, lookup=dataclasses.replace(LOOKUP, select="subscribed")),
            r"^lookup\.select: 'subscribed' is not a JSON Pointer",
            id="select-without-slash",
        ),
        pytest.param(
            dataclasses.replace(CONFIRM, lookup=dataclasses.replace(LOOKUP, select="/a~2b")),
            r"^lookup\.select: '/a~2b' is not a JSON Pointer",
            id="select-bad-escape",
        ),
        pytest.param(
            dataclasses.replace(CONFIRM, lookup=dataclasses.replace(LOOKUP, select="/a~")),
            r"^lookup\.select:",
            id="select-trailing-tilde",
        ),
        pytest.param(
            dataclasses.replace(CONFIRM, lookup=dataclasses.replace(LOOKUP, timeout_ms=0)),
            r"^lookup\.timeout_ms: .*got 0$",
            id="timeout-0",
        ),
        pytest.param(
            dataclasses.replace(
                CONFIRM, lookup=dataclasses.replace(LOOKUP, timeout_ms=MAX_TIMEOUT_MS + 1)
            ),
            r"^lookup\.timeout_ms: .*got 10001$",
            id="timeout-10001",
        ),
        pytest.param(_plain("x", subject=""), r"^subject: must not be empty", id="empty-subject"),
        pytest.param(
            _plain("x", subject=" \n"), r"^subject: must not be empty", id="blank-subject"
        ),
        pytest.param(_plain(""), r"^text: must not be empty", id="empty-text"),
        pytest.param(
            dataclasses.replace(CONFIRM, variants={"true": Variant(subject="")}),
            r"^variants\.true\.subject: must not be empty",
            id="empty-variant-subject",
        ),
        pytest.param(
            dataclasses.replace(CONFIRM, lookup=dataclasses.replace(LOOKUP, url="")),
            r"^lookup\.url: must not be empty",
            id="empty-lookup-url",
        ),
    ],
)
def test_check_refuses(template: Template, message: str) -> None:
    with pytest.raises(InvalidTemplate, match=message):
        check(template)


@pytest.mark.parametrize("select", ["", "/", "/subscribed", "/a~0b~1c/0", "/a b/ü"])
@pytest.mark.parametrize("timeout_ms", [1, MAX_TIMEOUT_MS])
def test_check_accepts_json_pointers_and_timeouts_within_bounds(
    select: str, timeout_ms: int
) -> None:
    check(
        dataclasses.replace(
            CONFIRM, lookup=dataclasses.replace(LOOKUP, select=select, timeout_ms=timeout_ms)
        )
    )


NAME_EVERYWHERE = Template(
    name="t",
    content=Content(subject="Hi {{ name }}", text="Dear {{ name }},\n", html="<p>{{ name }}</p>"),
)


@quick
@given(name=st.text())
def test_any_text_value_renders_verbatim(name: str) -> None:
    content = render(NAME_EVERYWHERE, None, {"name": name})

    assert content.text == f"Dear {name},\n"
    assert content.html == f"<p>{escape(name)}</p>"
    assert content.subject.splitlines() == ([content.subject] if content.subject else [])


# --- resource bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000000 }}",
        "{{ 1000000000 * 'a' }}",
        "{{ [1] * 10 ** 9 }}",
        "{{ 2 ** 100000 }}",
        "{{ ((10 ** 1000) ** 1000) ** 3 }}",
        "{% for i in range(100000) %}{% for j in range(20) %}xxxxxxxx{% endfor %}{% endfor %}",
        "{% set ns = namespace(x=2 ** 1000) %}"
        "{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x }}",
    ],
)
def test_a_template_cannot_make_the_worker_build_something_huge(source: str) -> None:
    template = Template("huge", Content("s", source))

    with pytest.raises(InvalidTemplate, match=r"^text: .*(not allowed|more than)"):
        render(template, None, {})


def test_small_repetitions_still_work_and_lipsum_is_gone() -> None:
    template = Template("ok", Content("s", "{{ '-' * 3 }}{{ 2 ** 10 }}"))
    assert render(template, None, {}).text == "---1024"
    with pytest.raises(MissingField):
        render(Template("l", Content("s", "{{ lipsum() }}")), None, {})


# --- the renderer: time and memory bounds, in a child process ----------------------

# Each builds something far past the memory bound (48 MB) before any size check
# could see it: filters, methods, operators, and the string of a nested value.
_BIG = "{% set a = 'x' * 100000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
_BIGGER = _BIG + "{% set c = [b, b, b, b, b, b, b, b, b, b] %}"
ALLOCATING = [
    "{{ ''|center(200000000) }}",
    "{{ 'x'.ljust(10 ** 9) }}",
    "{{ '1'.zfill(10 ** 9) }}",
    "{{ ('\t' * 1000).expandtabs(1000000) }}",
    "{{ ('x' * 100000)|replace('x', 'x' * 100000) }}",
    "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
    "{{ '%0200000000d'|format(1) }}",
    "{{ '%0200000000d' % 1 }}",
    "{{ '{:>200000000}'.format(1) }}",
    "{{ ('x\n' * 1000)|indent(1000000) }}",
    "{{ [1, 2]|batch(1000000000, 0)|list }}",
    "{{ ('x' * 100000)|list|map('center', 2000)|join }}",
    "{% set a = 'x' * 100000 %}{{ [a] * 1000 }}",
    "{% set a = 'x' * 100000 %}{{ ([a] * 1000)|join }}",
    "{% set a = 'x' * 100000 %}{{ ([a] * 1000)|tojson }}",
    "{% set a = 'x' * 100000 %}{{ ([a] * 1000)|string|length }}",
    "{{ ([[0] * 100000] * 1000)|sum(start=[]) }}",
    _BIGGER + "{{ [c, c, c, c, c, c, c, c, c, c]|join }}",
    "{% set ns = namespace(s='x' * 100000) %}"
    "{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s=[0] * 100000) %}"
    "{% for i in range(30) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
]
SPINNING = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ ('x' ~ i)|center(1000000)|length }}{% endfor %}",
    "{% macro m(n) %}{% for i in range(100000) %}{% for j in range(20) %}{% endfor %}"
    "{% endfor %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
]


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    """One renderer (two children) for the module: it is not bound to an event loop."""
    bounded = Renderer()
    yield bounded
    asyncio.run(bounded.close())


def _text(source: str) -> Template:
    return Template("hostile", Content("Hi", source))


@pytest.mark.parametrize("source", ALLOCATING)
async def test_a_render_cannot_take_more_memory_than_its_bound(
    renderer: Renderer, source: str
) -> None:
    with pytest.raises(BoundExceeded) as raised:
        await renderer.render(_text(source), None, {})

    # Which bound comes first can depend on the machine's speed: the memory bound, or
    # (on a busy machine, for those that build their string piece by piece) the deadline.
    assert raised.value.bound in (Bound.MEMORY, Bound.SIZE, Bound.TIME)
    assert raised.value.detail.startswith("text: ")
    assert raised.value.detail.endswith(f"(the {raised.value.bound} bound)")


async def test_the_memory_bound_says_so(renderer: Renderer) -> None:
    with pytest.raises(BoundExceeded) as raised:
        await renderer.render(_text("{{ ''|center(200000000) }}"), None, {})

    assert raised.value.bound is Bound.MEMORY
    assert raised.value.detail == (
        f"text: needs more than {RENDER_MEMORY_MB} MB of memory to render (the memory bound)"
    )


@pytest.mark.parametrize("source", SPINNING)
async def test_a_render_cannot_take_longer_than_its_deadline(
    renderer: Renderer, source: str
) -> None:
    with pytest.raises(BoundExceeded) as raised:
        await renderer.render(_text(source), None, {})

    assert raised.value.bound is Bound.TIME
    assert raised.value.detail == (
        f"text: takes longer than {RENDER_DEADLINE_S:g} s to render (the time bound)"
    )


async def test_the_size_bound_says_so(renderer: Renderer) -> None:
    template = Template("big", Content("Hi", "x", html="{{ 'x' * 100000 }}" * 11))

    with pytest.raises(BoundExceeded) as raised:
        await renderer.render(template, None, {})

    assert raised.value.bound is Bound.SIZE
    assert raised.value.detail == (
        f"html: renders to more than {MAX_RENDERED} characters (the size bound)"
    )


async def test_a_template_that_takes_too_long_to_compile_is_refused(renderer: Renderer) -> None:
    costly = "{{a+a+a+a+a+a+a+a+a}}" * 4_600  # ~3 times the time bound to compile, idle
    template = Template("slow", Content("Hi", costly, html=costly))

    with pytest.raises(BoundExceeded, match=r"^(text|html): takes longer than .* to compile"):
        await renderer.check(template)


async def test_a_child_that_does_not_answer_is_killed_at_the_deadline() -> None:
    """The alarm can be missed (a long call in C); the parent kills the child then."""
    others = set(children())
    renderer = Renderer(children=1)
    try:
        assert await renderer.fields(CONFIRM) == {"name", "to"}
        [child] = set(children()) - others
        os.kill(child, signal.SIGSTOP)
        with pytest.raises(BoundExceeded) as raised:
            await renderer.render(CONFIRM, None, VALUES)
        assert raised.value.bound is Bound.TIME
        assert raised.value.detail == (
            f"takes longer than {RENDER_DEADLINE_S:g} s to render (the time bound)"
        )
        assert child not in children()
        assert (await renderer.render(CONFIRM, None, VALUES)).subject == "Please confirm, Ada"
    finally:
        await renderer.close()
    assert set(children()) <= others


async def test_a_child_killed_from_outside_is_replaced_and_the_render_asked_again() -> None:
    """The OOM killer or an operator may kill a child mid-render: not the template's fault."""
    others = set(children())
    renderer = Renderer(children=1)
    try:
        await renderer.check(CONFIRM)
        [child] = set(children()) - others
        os.kill(child, signal.SIGSTOP)  # the request is written, then it dies unanswered
        rendering = asyncio.ensure_future(renderer.render(CONFIRM, None, VALUES))
        await asyncio.sleep(0.1)
        os.kill(child, signal.SIGKILL)

        assert (await rendering).subject == "Please confirm, Ada"
        assert child not in children()
    finally:
        await renderer.close()


async def test_after_hostile_templates_legitimate_ones_render(renderer: Renderer) -> None:
    for source in (ALLOCATING[0], SPINNING[0]):
        with pytest.raises(BoundExceeded):
            await renderer.render(_text(source), None, {})
    template = Template(
        "digest",
        Content(
            "{{ items|length }} news for {{ name|title }}",
            "{% for item in items|sort %}{{ loop.index }}. {{ item|upper|center(9) }}\n{% endfor %}"
            "{{ items|join(', ') }} {{ '%05.1f'|format(score) }} {{ '-' * 3 }}",
            "<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>",
        ),
    )
    values = {"name": "ada", "items": ["b<", "a"], "score": 9.25}

    assert await renderer.check(template) == {"items", "name", "score"}
    assert await renderer.render(template, None, values) == Content(
        "2 news for Ada",
        "1.     A    \n2.     B<   \nb<, a 009.2 ---",
        "<ul><li>b&lt;</li><li>a</li></ul>",
    )


async def test_the_renderer_raises_what_render_raises(renderer: Renderer) -> None:
    with pytest.raises(MissingField, match=r"^text: 'name' is undefined"):
        await renderer.render(_plain("{{ name }}"), None, {})
    with pytest.raises(InvalidTemplate, match=r"^text: "):
        await renderer.render(_plain("{{ ''.__class__ }}"), None, {})
    with pytest.raises(InvalidInput, match=r"^text: "):
        await renderer.render(_plain("{{ name|round }}"), None, {"name": "Ada"})
    with pytest.raises(InvalidTemplate, match=r"^text: line 1"):
        await renderer.check(_plain("{{ name }"))
    url = await renderer.render_lookup_url(CONFIRM, {"to": "a+b@example.com"})
    assert url == "http://crm.internal/supporters?email=a%2Bb%40example.com"
