"""peer_server.py: an MCP server built on the official Python SDK (`mcp` 2.x, MCPServer), the
Python upstream of shardcat's interop tests.

    peer_server.py --transport http|sse|stdio [--port N] [--host 127.0.0.1] [--stateless]

--transport http serves Streamable HTTP on /mcp and prints exactly one line `LISTENING <port>`
to stdout once uvicorn accepts connections (--port 0, the default, picks a free port: we bind
the socket ourselves and hand it to uvicorn, so there is no pick-then-bind race). --stateless
is the SDK's `stateless_http=True` (no Mcp-Session-Id, no GET stream, no server-to-client
requests on handshake-era wires). --transport sse serves the legacy HTTP+SSE transport
(2024-11-05: GET /sse, POST /messages/?session_id=...) the same way, `LISTENING <port>` too,
and `GET /sessions` ({"open", "opened"}: SSE connections open now and since start).
--transport stdio: stdout carries protocol only, logs go to
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

Federation (shardcat's tests/federation.rs puts several of these behind one gateway path):

    peer_server.py ... --federation NAME [--page-size N]

--federation NAME (NAME: [a-z0-9_-]+) adds, for a server called NAME (all text results):
- tools   whoami -> NAME (every federated server has it: an overlapping name, as are echo,
          sample, progress, notify...); only_NAME -> NAME; secret_NAME -> "secret of NAME"
          (for an exclude filter to hide); change_tools -> registers the tool added_NAME
          (-> NAME) if it is not there yet and sends notifications/tools/list_changed on every
          call (handshake era: on the session's standalone GET stream, as the SDK sends
          session notifications; 2026-07-28: to subscriptions/listen), "added added_NAME"
- prompts greet {who?} -> "NAME greets <who>" (overlapping); NAME_prompt -> "prompt of NAME"
- resources fed://NAME/readme ("readme of NAME"), fed://shared/readme ("shared readme of
          NAME": the same URI on every federated server, different content; its description
          "shared readme served by NAME" tells whose it is), and the template
          fed://NAME/items/{id} ("item <id> of NAME")
- GET /sessions (HTTP only, not MCP): {"name", "open", "opened"}: Streamable HTTP sessions
          open now, and opened since start (what a test checks after the gateway's DELETE)
- capabilities tools.listChanged = true (handshake era)
--page-size N: tools/list, prompts/list, resources/list and resources/templates/list answer N
items per page, with an opaque nextCursor (the spec's PaginatedRequest cursor); an unknown
cursor is -32602. Without it every list is one page, as MCPServer answers.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import re
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
from mcp.server.lowlevel import NotificationOptions
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.exceptions import MCPError

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


# ---- federation (--federation NAME, --page-size N) ---------------------------------------------

FEDERATION_NAME = re.compile(r"[a-z0-9_-]+")
# This server's federation name (--federation), if any.
FEDERATED: str | None = None
# Counts Streamable HTTP sessions the SDK admitted (GET /sessions), from serve_http on.
SESSIONS_OPENED = 0


def install_federation(name: str) -> None:
    """The tools, prompts and resources of federated server `name` (see the module doc)."""
    global FEDERATED
    FEDERATED = name

    def whoami() -> str:
        return name

    def only() -> str:
        return name

    def secret() -> str:
        return f"secret of {name}"

    def added() -> str:
        return name

    added_name = f"added_{name}"

    async def change_tools(ctx: Context) -> str:
        if mcp._tool_manager.get_tool(added_name) is None:  # noqa: SLF001
            mcp.add_tool(added, name=added_name, description=f"Added at run time to {name}.", structured_output=False)
            log(f"registered {added_name}")
        # Handshake era: the SDK sends session notifications on the standalone (GET) stream;
        # dropped when none is open, so it is sent again on every call. 2026-07-28: to
        # subscriptions/listen streams (none, unless a client listens).
        await ctx.session.send_tool_list_changed()
        await ctx.notify_tools_changed()
        return f"added {added_name}"

    for fn, tool, text in (
        (whoami, "whoami", "Returns the server's federation name."),
        (only, f"only_{name}", f"Offered by {name} alone; returns its name."),
        (secret, f"secret_{name}", "A tool a gateway filter is meant to hide."),
        (change_tools, "change_tools", f"Registers {added_name} and sends notifications/tools/list_changed."),
    ):
        mcp.add_tool(fn, name=tool, description=text, structured_output=False)

    def greet(who: str = "you") -> str:
        return f"{name} greets {who}"

    def own_prompt() -> str:
        return f"prompt of {name}"

    mcp.prompt(name="greet", description="Greets `who` (every federated server has it).")(greet)
    mcp.prompt(name=f"{name}_prompt", description=f"Offered by {name} alone.")(own_prompt)

    def readme() -> str:
        return f"readme of {name}"

    def shared() -> str:
        return f"shared readme of {name}"

    def item(id: str) -> str:  # noqa: A002 (the template's variable)
        return f"item {id} of {name}"

    mcp.resource(f"fed://{name}/readme", name=f"{name}-readme", description=f"readme of {name}", mime_type="text/plain")(readme)
    mcp.resource(
        "fed://shared/readme", name="shared-readme", description=f"shared readme served by {name}", mime_type="text/plain"
    )(shared)
    mcp.resource(f"fed://{name}/items/{{id}}", name=f"{name}-items", description=f"items of {name}", mime_type="text/plain")(item)

    # tools.listChanged in the handshake-era capabilities (the SDK leaves it false unless told).
    plain_options = _low.create_initialization_options

    def with_list_changed(notification_options: Any = None, *args: Any, **kwargs: Any) -> Any:
        return plain_options(notification_options or NotificationOptions(tools_changed=True), *args, **kwargs)

    _low.create_initialization_options = with_list_changed  # type: ignore[method-assign]

    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @mcp.custom_route("/sessions", methods=["GET"])
    async def sessions(request: Request) -> JSONResponse:
        open_now = len(mcp.session_manager._server_instances)  # noqa: SLF001
        return JSONResponse({"name": name, "open": open_now, "opened": SESSIONS_OPENED})


def count_sessions() -> None:
    """Counts the sessions the SDK admits (GET /sessions reports it)."""
    manager = mcp.session_manager
    admit = manager._admit_session  # noqa: SLF001

    def counted(*args: Any, **kwargs: Any) -> Any:
        global SESSIONS_OPENED
        transport = admit(*args, **kwargs)
        if transport is not None:
            SESSIONS_OPENED += 1
        return transport

    manager._admit_session = counted  # type: ignore[method-assign]  # noqa: SLF001


def _cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _page(kind: str, items: list[Any], cursor: str | None, size: int) -> tuple[list[Any], str | None]:
    """Items [offset, offset + size) and the cursor of the next page (None on the last)."""
    start = 0
    if cursor is not None:
        try:
            got, offset = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
            start = int(offset)
            if got != kind or not 0 <= start <= len(items):
                raise ValueError(cursor)
        except Exception as exc:  # noqa: BLE001 (any malformed cursor is the client's error)
            raise MCPError(code=t.INVALID_PARAMS, message=f"invalid {kind} cursor {cursor!r}") from exc
    end = start + size
    return items[start:end], (_cursor(kind, end) if end < len(items) else None)


def install_pagination(size: int) -> None:
    """Paginated list handlers on the low-level server: MCPServer answers every list in one page."""

    async def tools(ctx: Any, params: t.PaginatedRequestParams) -> t.ListToolsResult:
        page, nxt = _page("tools", await mcp.list_tools(), params.cursor, size)
        return t.ListToolsResult(tools=page, next_cursor=nxt)

    async def prompts(ctx: Any, params: t.PaginatedRequestParams) -> t.ListPromptsResult:
        page, nxt = _page("prompts", await mcp.list_prompts(), params.cursor, size)
        return t.ListPromptsResult(prompts=page, next_cursor=nxt)

    async def resources(ctx: Any, params: t.PaginatedRequestParams) -> t.ListResourcesResult:
        page, nxt = _page("resources", await mcp.list_resources(), params.cursor, size)
        return t.ListResourcesResult(resources=page, next_cursor=nxt)

    async def templates(ctx: Any, params: t.PaginatedRequestParams) -> t.ListResourceTemplatesResult:
        page, nxt = _page("templates", await mcp.list_resource_templates(), params.cursor, size)
        return t.ListResourceTemplatesResult(resource_templates=page, next_cursor=nxt)

    for method, handler in (
        ("tools/list", tools),
        ("prompts/list", prompts),
        ("resources/list", resources),
        ("resources/templates/list", templates),
    ):
        _low.add_request_handler(method, t.PaginatedRequestParams, handler)


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
    if FEDERATED is not None:
        count_sessions()
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


SSE_SESSIONS = {"open": 0, "opened": 0}


async def serve_sse(host: str, port: int) -> None:
    """The legacy HTTP+SSE transport (what `MCPServer.run("sse")` serves), on our own socket."""
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    app = mcp.sse_app(host=host)

    async def sessions(_request: Any) -> JSONResponse:
        return JSONResponse(SSE_SESSIONS)

    app.router.routes.insert(0, Route("/sessions", sessions))
    inner = app

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        is_stream = scope.get("type") == "http" and scope.get("path") == "/sse"
        if is_stream:
            SSE_SESSIONS["open"] += 1
            SSE_SESSIONS["opened"] += 1
        try:
            await inner(scope, receive, send)
        finally:
            if is_stream:
                SSE_SESSIONS["open"] -= 1

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(counted, log_level="warning", access_log=False, lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:
                await anyio.sleep(0.01)
        print(f"LISTENING {bound}", flush=True)
        log(f"serving legacy SSE on http://{host}:{bound}/sse")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", choices=["http", "sse", "stdio"], required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--stateless", action="store_true")
    ap.add_argument("--federation", metavar="NAME", help="add the federation tools, prompts and resources of server NAME")
    ap.add_argument("--page-size", type=int, metavar="N", help="paginate every list, N items a page")
    args = ap.parse_args()
    if args.federation is not None:
        if not FEDERATION_NAME.fullmatch(args.federation):
            ap.error(f"--federation {args.federation!r}: the name must match [a-z0-9_-]+")
        install_federation(args.federation)
    if args.page_size is not None:
        if args.page_size < 1:
            ap.error("--page-size must be at least 1")
        install_pagination(args.page_size)
    if args.transport == "stdio":
        anyio.run(mcp.run_stdio_async)
    elif args.transport == "sse":
        anyio.run(serve_sse, args.host, args.port)
    else:
        anyio.run(serve_http, args.host, args.port, args.stateless)


if __name__ == "__main__":
    main()
