"""peer_server.py: an MCP server built on the official Python SDK (`mcp` 2.x, MCPServer), the
Python upstream of shardcat's interop tests.

    peer_server.py --transport http|stdio [--port N] [--host 127.0.0.1] [--stateless]

--transport http serves Streamable HTTP on /mcp and prints exactly one line `LISTENING <port>`
to stdout once uvicorn accepts connections (--port 0, the default, picks a free port: we bind
the socket ourselves and hand it to uvicorn, so there is no pick-then-bind race). --stateless
is the SDK's `stateless_http=True` (no Mcp-Session-Id, no GET stream, no server-to-client
requests on handshake-era wires). --transport stdio: stdout carries protocol only, logs go to
stderr.

Both protocol eras are served from the same endpoint: handshake-era clients (initialize,
sessions) and 2026-07-28 clients (server/discover, one self-contained POST per request; the
SDK routes on the Mcp-Protocol-Version header).

Tools of the shared test contract (same as fixtures' mcp-stdio-server):
- echo {text}                  -> `text`
- progress {count, interval_ms}-> `count` progress notifications (1..count, total=count) to the
                                  request's progressToken, interval_ms apart, then "done"
- sample {prompt}              -> sampling/createMessage (user message = prompt); the sampled text
- elicit {message}             -> elicitation/create (schema: one string field `name`);
                                  "accepted:<name>" or "declined"
- notify {text}                -> notifications/message (info, data=text) on the session's
                                  standalone channel (the GET stream), then "notified"
`sample` and `elicit` use the SDK's Resolve(...) markers, so the same tool works in both eras:
<= 2025-11-25 sends the server-to-client request mid-call; 2026-07-28 answers with an
InputRequiredResult (SEP-2322) and finishes when the client retries with the responses.

Plus the fixtures the conformance suite's server scenarios name (test_* tools, test://
resources, test_* prompts, completion, logging/setLevel, resources/(un)subscribe,
test_reconnection for SSE polling).
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import socket
import struct
import sys
import warnings
import wave
import zlib
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, Field

import mcp_types as t
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
    UserMessage,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import EventMessage, EventStore

# Logging, sampling and the session-level log call are deprecated by the 2026-07-28 revision
# (SEP-2577), but every handshake-era wire has them and the gateway must relay them.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")


def log(msg: str) -> None:
    print(f"peer_server: {msg}", file=sys.stderr, flush=True)


def _png_1x1() -> bytes:
    """A 1x1 red RGB PNG, built here so no binary blob is checked in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    """10 ms of 8 kHz mono 16-bit silence."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 80)
    return buf.getvalue()


PNG = _png_1x1()
PNG_B64 = base64.b64encode(PNG).decode()
WAV_B64 = base64.b64encode(_wav_silence()).decode()
MAX_PROGRESS = 10_000  # a typo in `count` must not flood the peer

mcp = MCPServer("shardcat-py-peer", version="1.0.0")


# ---- the shared test contract ----------------------------------------------------------------


@mcp.tool(description="Returns `text` unchanged.", structured_output=False)
def echo(text: str) -> str:
    return text


@mcp.tool(description="Sends `count` progress notifications `interval_ms` apart, then returns done.", structured_output=False)
async def progress(count: int, interval_ms: int, ctx: Context) -> str:
    count = max(0, min(count, MAX_PROGRESS))
    for i in range(1, count + 1):
        if i > 1:
            await anyio.sleep(max(0, interval_ms) / 1000)
        # A no-op when the request carried no progressToken.
        await ctx.report_progress(i, count)
    return "done"


def _text_of(content: Any) -> str:
    """The text of a sampling result's content (one block, or a list of blocks)."""
    blocks = content if isinstance(content, list) else [content]
    return "".join(getattr(b, "text", "") for b in blocks)


def _ask_sample(prompt: str) -> Sample:
    return Sample([t.SamplingMessage(role="user", content=t.TextContent(type="text", text=prompt))], max_tokens=64)


@mcp.tool(description="Asks the client to sample `prompt`; returns the sampled text.", structured_output=False)
async def sample(prompt: str, sampled: Annotated[t.CreateMessageResult, Resolve(_ask_sample)]) -> str:
    return _text_of(sampled.content)


class NameForm(BaseModel):
    name: str


def _ask_name(message: str) -> Elicit[NameForm]:
    return Elicit(message, NameForm)


@mcp.tool(description="Asks the client for a `name`; returns accepted:<name> or declined.", structured_output=False)
async def elicit(message: str, answer: Annotated[ElicitationResult[NameForm], Resolve(_ask_name)]) -> str:
    if isinstance(answer, AcceptedElicitation):
        return f"accepted:{answer.data.name}"
    return "declined"


@mcp.tool(description="Sends a notifications/message carrying `text` on the session's standalone stream.", structured_output=False)
async def notify(text: str, ctx: Context) -> str:
    # No related_request_id: the SDK routes it on the connection's standalone channel (the GET
    # SSE stream on Streamable HTTP), not on this request's response stream. Where there is no
    # standalone channel (stateless HTTP, 2026-07-28) the SDK drops it with a debug log.
    await ctx.session.send_log_message(level="info", data=text)
    return "notified"


# ---- conformance suite fixtures (names and contents as its server scenarios ask) --------------


@mcp.tool(description="Returns a simple text response.", structured_output=False)
def test_simple_text() -> str:
    return "This is a simple text response for testing."


@mcp.tool(description="Returns a 1x1 PNG image.", structured_output=False)
def test_image_content() -> t.ImageContent:
    return t.ImageContent(type="image", data=PNG_B64, mime_type="image/png")


@mcp.tool(description="Returns a short WAV clip.", structured_output=False)
def test_audio_content() -> t.AudioContent:
    return t.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")


def _embedded(uri: str, text: str, mime: str) -> t.EmbeddedResource:
    return t.EmbeddedResource(type="resource", resource=t.TextResourceContents(uri=uri, mime_type=mime, text=text))


@mcp.tool(description="Returns an embedded text resource.", structured_output=False)
def test_embedded_resource() -> t.EmbeddedResource:
    return _embedded("test://embedded-resource", "This is an embedded resource content.", "text/plain")


@mcp.tool(description="Returns text, image and resource content.", structured_output=False)
def test_multiple_content_types() -> list[t.ContentBlock]:
    return [
        t.TextContent(type="text", text="Multiple content types test:"),
        t.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
        _embedded("test://mixed-content-resource", json.dumps({"test": "data", "value": 123}), "application/json"),
    ]


@mcp.tool(description="Sends three info log messages while it runs.", structured_output=False)
async def test_tool_with_logging(ctx: Context) -> str:
    for i, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
        if i:
            await anyio.sleep(0.05)
        await ctx.info(text)  # request-scoped: rides this request's stream
    return "Tool with logging executed successfully"


@mcp.tool(description="Always fails.", structured_output=False)
def test_error_handling() -> str:
    raise ToolError("This tool intentionally returns an error for testing")


@mcp.tool(description="Reports progress 0, 50, 100 of 100.", structured_output=False)
async def test_tool_with_progress(ctx: Context) -> str:
    for i, p in enumerate((0, 50, 100)):
        if i:
            await anyio.sleep(0.05)
        await ctx.report_progress(p, 100)
    return "Tool with progress executed successfully"


def _ask_llm(prompt: str) -> Sample:
    return Sample([t.SamplingMessage(role="user", content=t.TextContent(type="text", text=prompt))], max_tokens=100)


@mcp.tool(description="Asks the client to sample `prompt`.", structured_output=False)
async def test_sampling(prompt: str, sampled: Annotated[t.CreateMessageResult, Resolve(_ask_llm)]) -> str:
    return f"LLM response: {_text_of(sampled.content)}"


class UserInfo(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


def _ask_user(message: str) -> Elicit[UserInfo]:
    return Elicit(message, UserInfo)


@mcp.tool(description="Asks the client for a username and email.", structured_output=False)
async def test_elicitation(message: str, answer: Annotated[ElicitationResult[UserInfo], Resolve(_ask_user)]) -> str:
    content = answer.data.model_dump() if isinstance(answer, AcceptedElicitation) else {}
    return f"User response: <action: {answer.action}, content: {json.dumps(content)}>"


class Sep1034Form(BaseModel):
    name: str = "John Doe"
    age: int = 30
    score: float = 95.5
    status: Literal["active", "inactive", "pending"] = "active"
    verified: bool = True


def _ask_defaults() -> Elicit[Sep1034Form]:
    return Elicit("Please review the defaults", Sep1034Form)


@mcp.tool(description="Elicits a form whose fields carry defaults (SEP-1034).", structured_output=False)
async def test_elicitation_sep1034_defaults(
    answer: Annotated[ElicitationResult[Sep1034Form], Resolve(_ask_defaults)],
) -> str:
    content = answer.data.model_dump() if isinstance(answer, AcceptedElicitation) else {}
    return f"Elicitation completed: action={answer.action}, content={json.dumps(content)}"


# The five enum shapes of SEP-1330, written out as JSON Schema: pydantic cannot render the
# titled (oneOf/anyOf const+title) and legacy enumNames variants from a model.
SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}


@mcp.tool(description="Elicits a form with the five SEP-1330 enum shapes (handshake-era only).", structured_output=False)
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    # A raw schema needs the session's elicit_form, a handshake-era server-to-client request.
    result = await ctx.session.elicit_form(
        "Please pick options", requested_schema=SEP1330_SCHEMA, related_request_id=ctx.request_id
    )
    return f"Elicitation completed: action={result.action}, content={json.dumps(result.content or {})}"


@mcp.tool(description="Tool with JSON Schema 2020-12 features", structured_output=False)
def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> str:
    return f"name={name} address={json.dumps(address)}"


# The listing must carry $schema, $defs and additionalProperties verbatim (SEP-1613); the
# function signature above only drives argument parsing.
mcp._tool_manager.get_tool("json_schema_2020_12_tool").parameters = {  # noqa: SLF001
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


@mcp.tool(description="Closes its SSE stream mid-call, then answers (SSE polling, SEP-1699).", structured_output=False)
async def test_reconnection(ctx: Context) -> str:
    await anyio.sleep(0.1)
    # A no-op unless an event store is configured and the request's protocol version is
    # >= 2025-11-25; then the answer is stored and replayed on the client's GET reconnect.
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)
    return "Reconnection test completed"


@mcp.resource("test://static-text", name="static-text", description="A static text resource", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", name="static-binary", description="A static PNG", mime_type="image/png")
def static_binary() -> bytes:
    return PNG


@mcp.resource("test://watched-resource", name="watched-resource", description="A subscribable resource", mime_type="text/plain")
def watched_resource() -> str:
    return "watched"


@mcp.resource("test://template/{id}/data", name="template-data", description="Data by id", mime_type="application/json")
def template_data(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.prompt(description="A simple prompt without arguments")
def test_simple_prompt() -> str:
    return "This is a simple prompt for testing."


@mcp.prompt(description="A prompt with two required arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@mcp.prompt(description="A prompt embedding the resource `resourceUri`")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 (wire name)
    return [
        UserMessage(_embedded(resourceUri, "Embedded resource content for testing.", "text/plain")),
        UserMessage("Please process the embedded resource above."),
    ]


@mcp.prompt(description="A prompt carrying an image")
def test_prompt_with_image() -> list[UserMessage]:
    return [
        UserMessage(t.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
        UserMessage("Please analyze the image above."),
    ]


COMPLETIONS = {"arg1": ["paris", "park", "party"], "arg2": ["world", "word"], "id": ["123", "456"]}


@mcp.completion()
async def complete(ref: Any, argument: t.CompletionArgument, context: Any) -> t.Completion:
    values = [v for v in COMPLETIONS.get(argument.name, []) if v.startswith(argument.value)]
    return t.Completion(values=values, total=len(values), has_more=False)


# MCPServer has no decorators for these handshake-era methods; register them on the low-level
# server (capabilities `logging` and `resources.subscribe` follow from the registration).
async def _set_level(ctx: Any, params: t.SetLevelRequestParams) -> t.EmptyResult:
    return t.EmptyResult()


SUBSCRIBED: set[str] = set()


async def _subscribe(ctx: Any, params: t.SubscribeRequestParams) -> t.EmptyResult:
    SUBSCRIBED.add(str(params.uri))
    return t.EmptyResult()


async def _unsubscribe(ctx: Any, params: t.UnsubscribeRequestParams) -> t.EmptyResult:
    SUBSCRIBED.discard(str(params.uri))
    return t.EmptyResult()


_low = mcp._lowlevel_server  # noqa: SLF001
_low.add_request_handler("logging/setLevel", t.SetLevelRequestParams, _set_level)
_low.add_request_handler("resources/subscribe", t.SubscribeRequestParams, _subscribe)
_low.add_request_handler("resources/unsubscribe", t.UnsubscribeRequestParams, _unsubscribe)


class MemoryEventStore(EventStore):
    """Bounded in-memory event store: gives POST SSE streams a priming event and lets a client
    resume a closed stream with Last-Event-ID (SSE polling). Oldest events fall off past CAP."""

    CAP = 50_000

    def __init__(self) -> None:
        self._events: collections.OrderedDict[str, tuple[str, Any]] = collections.OrderedDict()
        self._next = 0

    async def store_event(self, stream_id: str, message: Any) -> str:
        self._next += 1
        event_id = str(self._next)
        self._events[event_id] = (stream_id, message)
        if len(self._events) > self.CAP:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        if last_event_id not in self._events:
            return None
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(self._events.items()):
            if after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


async def serve_http(host: str, port: int, stateless: bool) -> None:
    import uvicorn

    app = mcp.streamable_http_app(
        stateless_http=stateless,
        event_store=None if stateless else MemoryEventStore(),
        retry_interval=None if stateless else 1000,
        host=host,  # 127.0.0.1/localhost: the SDK turns on Host/Origin (DNS rebinding) checks
    )
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    # access_log off: uvicorn's access log goes to stdout, which carries only LISTENING.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.01)
        print(f"LISTENING {bound}", flush=True)
        log(f"serving http://{host}:{bound}/mcp ({'stateless' if stateless else 'stateful'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", choices=["http", "stdio"], required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--stateless", action="store_true")
    args = ap.parse_args()
    if args.transport == "stdio":
        anyio.run(mcp.run_stdio_async)
    else:
        anyio.run(serve_http, args.host, args.port, args.stateless)


if __name__ == "__main__":
    main()
