"""Email templates: compiling, the sandbox, strict values, escaping and the lookup URL."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

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
