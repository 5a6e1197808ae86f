"""Content parts in requests, as every translating provider receives them (pure): each part
reaches the provider in a form it reads, or is a 400 naming it; none goes missing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from streamproxy.errors import InvalidRequest
from streamproxy.providers.anthropic.request import to_anthropic
from streamproxy.providers.bedrock.request import to_converse
from streamproxy.providers.cohere.request import to_cohere
from streamproxy.providers.gemini.request import to_gemini
from streamproxy.providers.ollama.request import to_ollama

TRANSLATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "anthropic": lambda body: to_anthropic(body, "claude-sonnet-4-5"),
    "bedrock": lambda body: to_converse(body, "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    "gemini": lambda body: to_gemini(body, "gemini-2.5-flash"),
    "cohere": lambda body: to_cohere(body, "command-a-vision-07-2025"),
    "ollama": lambda body: to_ollama(body, "llava", stream=True),
}


def _conversation(out: dict[str, Any]) -> list[dict[str, Any]]:
    return out.get("messages") or out["contents"]


REFUSED = "I can't help with that."


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("content", [
    [{"type": "refusal", "refusal": REFUSED}],
    [{"type": "text", "text": "Let me see."}, {"type": "refusal", "refusal": REFUSED}],
])
def test_an_assistant_s_refusal_part_reaches_the_model_as_what_it_said(
        provider: str, content: list[dict[str, Any]]) -> None:
    """An assistant turn that refused (OpenAI's `refusal` part, as a client replays such an
    answer) was left out: alone, the turn vanished and the user turns around it merged (Claude,
    Converse, Gemini) or went blank (Cohere, Ollama), so the model answered "why not?" without
    knowing it had refused. OpenAI reads the refusal as what the assistant said."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [
        {"role": "user", "content": "How do I pick this lock?"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "Why not?"}]})
    turns = _conversation(out)
    assert len(turns) == 3
    assert REFUSED in orjson.dumps(turns[1]).decode()


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("content", [None, ""])
def test_an_assistant_message_s_refusal_field_reaches_the_model(
        provider: str, content: str | None) -> None:
    """The openai SDK's message object of a refused answer (`content: null`, `refusal` its
    words; ours too, for a Claude refusal or a blocked Gemini prompt), appended to the history
    as clients do: the refusal was dropped with the turn, as a refusal part was."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [
        {"role": "user", "content": "How do I pick this lock?"},
        {"role": "assistant", "content": content, "refusal": REFUSED},
        {"role": "user", "content": "Why not?"}]})
    turns = _conversation(out)
    assert len(turns) == 3
    assert REFUSED in orjson.dumps(turns[1]).decode()


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_a_refusal_field_beside_content_adds_nothing(provider: str) -> None:
    # An answer has one or the other; beside text (a client's own edit), the text is the turn.
    out = TRANSLATORS[provider]({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello.", "refusal": None},
        {"role": "user", "content": "Bye."}]})
    assert orjson.dumps(_conversation(out)[1]).decode().count("Hello.") == 1


# A 1x1 PNG, and its base64 as MIME (and Android's Base64.DEFAULT, GNU base64) write it: a line
# break every 76 characters.
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
       "rkJggg==")
WRAPPED = "\r\n".join(PNG[k:k + 76] for k in range(0, len(PNG), 76)) + "\n"


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("data", [WRAPPED, " " + PNG, PNG.replace("A", "A\t", 1)])
def test_whitespace_in_a_data_url_s_base64_is_not_sent_on(provider: str, data: str) -> None:
    """A data: URL's base64 may hold ASCII whitespace (line breaks from MIME-style encoders, a
    space after the comma), which data: URL readers skip (WHATWG's forgiving-base64). The
    providers' base64 fields are strict (Anthropic: "invalid base64 data"), and a space before
    the data hid the bytes' type too (a PNG labelled image/jpeg went as jpeg, which Claude
    refuses). The base64 goes on without it."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}]}]})
    images = [s for s in _strings(out) if "iVBOR" in s]
    assert images in ([PNG], [f"data:image/png;base64,{PNG}"])  # (Cohere's is a data: URL)
    if provider != "ollama":  # (Ollama's images carry no type)
        assert "jpeg" not in orjson.dumps(out).decode()


def _strings(value: Any) -> list[str]:
    """Every string in a translated request, its keys' aside."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [s for item in items for s in _strings(item)]


def test_a_wrapped_text_file_is_read_as_its_text() -> None:
    # Anthropic's text documents are decoded here: a wrapped one was a 400 saying it is no UTF-8.
    text = "A line of a text file, long enough that its base64 runs over one MIME line."
    encoded = base64.b64encode(text.encode()).decode()
    wrapped = "\n".join(encoded[k:k + 76] for k in range(0, len(encoded), 76))
    out = TRANSLATORS["anthropic"]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.txt",
                                  "file_data": f"data:text/plain;base64,{wrapped}"}}]}]})
    assert out["messages"][0]["content"][0]["source"] == {
        "type": "text", "media_type": "text/plain", "data": text}


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_a_tool_result_s_text_parts_keep_apart(provider: str) -> None:
    """A tool result of several text parts (an MCP tool's content items, one per hit): Gemini's
    function response joined them with nothing ("…Paris.Result 2…"), where Cohere and Ollama
    put a line between and Anthropic and Converse keep each a block of its own."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "search", "arguments": '{"q": "capital"}'}}
    out = TRANSLATORS[provider]({"model": "m", "messages": [
        {"role": "user", "content": "Search."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "text", "text": "Result 1: Paris."},
            {"type": "text", "text": "Result 2: Lyon."}]}]})
    assert "Paris.Result" not in orjson.dumps(out).decode()
    assert "Result 2: Lyon." in orjson.dumps(out).decode()


PDF = base64.b64encode(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj").decode()


@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "gemini"])
@pytest.mark.parametrize("label", ["application/octet-stream", "binary/octet-stream"])
def test_a_pdf_with_a_generic_label_goes_as_a_pdf(provider: str, label: str) -> None:
    """A PDF whose data: URL says only application/octet-stream (what a client writes when
    its file library does not know the type): its bytes say PDF, as an image's say its type,
    yet Anthropic and Bedrock answered it with the proxy's 400 and Gemini got a type it
    refuses ("Unsupported MIME type")."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarise."},
        {"type": "file", "file": {"filename": "report.pdf",
                                  "file_data": f"data:{label};base64,{PDF}"}}]}]})
    sent = orjson.dumps(out).decode()
    assert label not in sent
    assert "application/pdf" in sent or '"format":"pdf"' in sent


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("scheme", ["DATA", "Data"])
def test_an_upper_case_data_scheme_is_a_data_url(provider: str, scheme: str) -> None:
    """URL schemes are case-insensitive (RFC 3986 §3.1), and so is `;base64` (WHATWG): a
    `DATA:image/png;BASE64,…` image was a 400 "Expected a data: URL" on every provider."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"{scheme}:image/png;BASE64,{PNG}"}}]}]})
    assert [s for s in _strings(out) if "iVBOR" in s] in (
        [PNG], [f"data:image/png;base64,{PNG}"])


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "cohere"])
def test_an_upper_case_https_scheme_is_an_http_url(provider: str) -> None:
    # The providers that take image URLs get it with its scheme lower-cased, as they read it.
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "HTTPS://example.com/Cat.png"}}]}]})
    assert "https://example.com/Cat.png" in _strings(out)


@pytest.mark.parametrize("provider", TRANSLATORS)
@pytest.mark.parametrize("data", ["%%%", "iVBORw0KGgo=A", "iVBORw0KGgoA=", "iVBOR", "i=VBORw0KGgo"])
def test_a_data_url_s_bad_base64_is_a_400_naming_the_part(provider: str, data: str) -> None:
    """A data: URL whose base64 is not base64 (a stray `%`, padding inside or of the wrong
    length) went to every provider as it was, and the client got the provider's 400 (or one
    about something else) instead of one naming its part, as OpenAI's does."""
    with pytest.raises(InvalidRequest) as raised:
        TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]}]})
    assert raised.value.param == "messages[0].content[1].image_url.url"
    assert "base64" in str(raised.value)


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_a_data_url_s_base64_without_its_padding_goes_padded(provider: str) -> None:
    # data: URL readers take base64 without its `=`s (WHATWG's forgiving-base64); the
    # providers' base64 fields do not.
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG.rstrip('=')}"}}]}]})
    assert [s for s in _strings(out) if "iVBOR" in s] in ([PNG], [f"data:image/png;base64,{PNG}"])


UNLABELLED_PNG = "data:;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").decode()


@pytest.mark.parametrize("provider", TRANSLATORS)
def test_an_image_whose_data_url_has_no_media_type_goes_as_its_bytes_type(provider: str) -> None:
    """`data:;base64,…` (RFC 2397 lets the type out: text/plain by default; uploads of a
    file of no known type make it) was a 400 "A data: URL must look like…" on every
    translating provider, though an image's bytes tell its type, as they do for a label that
    is generic or wrong."""
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": UNLABELLED_PNG}}]}]})
    sent = orjson.dumps(_conversation(out)).decode()
    assert UNLABELLED_PNG.split(",", 1)[1] in sent
    assert provider in ("ollama", "bedrock") or "image/png" in sent
    assert provider != "bedrock" or '"format":"png"' in sent


@pytest.mark.parametrize("provider", ["anthropic", "bedrock", "gemini"])
@pytest.mark.parametrize(("data", "expected"), [
    (b"%PDF-1.7 rest", {"anthropic": "application/pdf", "bedrock": '"format":"pdf"',
                        "gemini": "application/pdf"}),
    (b"plain words", {"anthropic": "plain words", "bedrock": '"format":"txt"',
                      "gemini": "text/plain"})])
def test_a_file_whose_data_url_has_no_media_type_is_a_pdf_by_its_bytes_else_text(
        provider: str, data: bytes, expected: dict[str, str]) -> None:
    # A PDF's bytes say so; other bytes are RFC 2397's default, text/plain.
    url = "data:;base64," + base64.b64encode(data).decode()
    out = TRANSLATORS[provider]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Read"},
        {"type": "file", "file": {"filename": "f", "file_data": url}}]}]})
    assert expected[provider] in orjson.dumps(_conversation(out)).decode()


@pytest.mark.parametrize(("filename", "fmt"), [
    ("Minutes 2024.docx", '"format":"docx"'), ("budget.XLSX", '"format":"xlsx"'),
    ("table.csv", '"format":"csv"'), ("data.json", '"format":"txt"'), ("notes", '"format":"txt"')])
def test_bedrock_an_unlabelled_file_goes_by_its_extension_before_text(
        filename: str, fmt: str) -> None:
    """An unlabelled (`data:;base64,`) Word or Excel file went to Bedrock as `txt`, RFC 2397's
    text/plain beating its filename, which a generic label does not: the model read a zip as
    text. A type defaulted, not given, yields to a known extension; else it is text."""
    url = "data:;base64," + base64.b64encode(b"PK\x03\x04\x14\0\x06\0").decode()
    out = TRANSLATORS["bedrock"]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Read"},
        {"type": "file", "file": {"filename": filename, "file_data": url}}]}]})
    assert fmt in orjson.dumps(_conversation(out)).decode()


@pytest.mark.parametrize(("filename", "mime"), [
    ("call.mp3", "audio/mpeg"), ("clip.mp4", "video/mp4"), ("table.csv", "text/csv"),
    ("report.docx", "text/plain"), ("notes", "text/plain"), (None, "text/plain")])
def test_gemini_an_unlabelled_file_goes_by_its_extension_before_text(
        filename: str | None, mime: str) -> None:
    """An unlabelled (`data:;base64,`) recording or video named call.mp3 went to Gemini as
    text/plain, RFC 2397's default: the model read audio bytes as text. A defaulted type
    yields to a media type the filename tells (as a URL's type is guessed); else text."""
    url = "data:;base64," + base64.b64encode(b"ID3\x04\0\0\0\0\0\x00ftyp").decode()
    out = TRANSLATORS["gemini"]({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Listen"},
        {"type": "file", "file": {"filename": filename, "file_data": url}}]}]})
    assert out["contents"][0]["parts"][1]["inlineData"]["mimeType"] == mime
