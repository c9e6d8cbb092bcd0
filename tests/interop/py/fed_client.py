"""fed_client.py: N concurrent sessions of the official Python SDK client (`mcp` 2.x, `Client`)
against one federated route of shardcat (several MCP servers behind one path), the Python
client of tests/federation.rs.

    fed_client.py --url URL --sessions N [--mode legacy|auto|2026-07-28] [--label NAME]
                  [--timeout-s 60] [--servers alpha,beta,gamma] [--separator __]
                  [--require NAME,...] [--forbid NAME,...]

--servers names the route's servers and --separator the gateway's prefix separator: a listed
name `<server><separator><name>` is `name` offered by `server`; any other name is bare (its
owner is one of --servers, unknown to us).

Each session, in order (the step names are the ones reported on failure):
  connect    initialize (legacy), discover-or-initialize (auto) or server/discover
             (2026-07-28), declaring sampling ("sampled:<prompt>") and elicitation (accept,
             with every field of the requested schema filled in)
  tools/list every page (following nextCursor); no name twice; every --require name listed,
             no --forbid name listed
  tools/call every listed tool whose base name (the prefix taken off) has a contract below;
             the others are skipped and named in skipped_steps. whoami, only_X, secret_X and
             added_X must answer their owner (the prefix's server, or X)
  prompts    prompts/list (every page), then prompts/get of each greet, <server>_prompt and
             test_simple_prompt listed
  resources  resources/list (every page), then resources/read of each resource listed: it
             must answer contents, and a fed:// resource's text must name the server whose
             description it carries ("... served by X" / "readme of X")
  close      leave the Client: with a session, a DELETE must be sent and answered 200 (or 405)

stdout: exactly one JSON line at the end:
  {"label", "mode", "sessions", "passed", "failed": [{"session", "step", "error"}],
   "skipped_steps": {step: reason}, "versions": [...], "tools": [names session 0 listed],
   "calls": tool calls that passed, over all sessions}
Exit status 0 iff every session passed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
import httpx2

import mcp_types as t
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

# Logging/sampling are deprecated by 2026-07-28 (SEP-2577) but are what the handshake era uses.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")

MODERN = "2026-07-28"
CLOSE_GRACE_S = 10.0  # leaving the Client (DELETE) gets this much past --timeout-s
SSE_READ_TIMEOUT_S = 300.0  # an idle GET stream may stay silent; our own scopes bound the steps
MAX_PAGES = 1000  # a gateway whose cursors loop must fail the step, not hang it


class StepFailed(Exception):
    pass


@dataclass
class Session:
    index: int
    step: str = "connect"
    version: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None
    delete_status: int | None = None
    tools: list[str] = field(default_factory=list)
    calls: int = 0

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and self.session_id is None:
            self.session_id = sid
        if response.request.method == "DELETE":
            self.delete_status = response.status_code


def _prompt_text(params: t.CreateMessageRequestParams) -> str:
    content = params.messages[-1].content if params.messages else None
    blocks = content if isinstance(content, list) else [content]
    return "".join(getattr(b, "text", "") or "" for b in blocks)


async def on_sampling(ctx: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    text = f"sampled:{_prompt_text(params)}"
    return t.CreateMessageResult(
        role="assistant", content=t.TextContent(type="text", text=text), model="fed-model", stop_reason="endTurn"
    )


def _fill(prop: dict[str, Any]) -> Any:
    """A valid value for one property of an elicitation schema."""
    if "default" in prop:
        return prop["default"]
    if "enum" in prop:
        return prop["enum"][0]
    for key in ("oneOf", "anyOf"):
        if key in prop and prop[key] and "const" in prop[key][0]:
            return prop[key][0]["const"]
    kind = prop.get("type")
    return {"array": [], "integer": 1, "number": 1.0, "boolean": True}.get(kind, "peer")


async def on_elicitation(ctx: Any, params: Any) -> t.ElicitResult:
    schema = getattr(params, "requested_schema", None) or {}
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return t.ElicitResult(action="accept", content={k: _fill(v) for k, v in props.items()})


def texts(result: t.CallToolResult) -> str:
    return "".join(getattr(b, "text", "") or "" for b in result.content)


def ok_text(result: t.CallToolResult) -> str:
    if result.is_error:
        raise StepFailed(f"tool returned isError: {texts(result)!r}")
    return texts(result)


def first_type(result: t.CallToolResult) -> str:
    ok_text(result)
    return result.content[0].type if result.content else ""


# base name -> (arguments for session i, check(result, owner, i) -> error or None)
Check = Callable[[t.CallToolResult, "str | None", int], "str | None"]


def equals(want: Callable[[str | None, int], str]) -> Check:
    def check(r: t.CallToolResult, owner: str | None, i: int) -> str | None:
        got, expect = ok_text(r), want(owner, i)
        return None if got == expect else f"returned {got!r}, not {expect!r}"

    return check


def contains(want: Callable[[int], str]) -> Check:
    def check(r: t.CallToolResult, owner: str | None, i: int) -> str | None:
        got = ok_text(r)
        return None if want(i) in got else f"returned {got!r}, which lacks {want(i)!r}"

    return check


def content_type(kind: str) -> Check:
    def check(r: t.CallToolResult, owner: str | None, i: int) -> str | None:
        got = first_type(r)
        return None if got == kind else f"first content block is {got!r}, not {kind!r}"

    return check


def is_error(r: t.CallToolResult, owner: str | None, i: int) -> str | None:
    return None if r.is_error else f"should fail (isError) but returned {texts(r)!r}"


def owner_name(r: t.CallToolResult, owner: str | None, i: int) -> str | None:
    got = ok_text(r)
    if owner is not None:
        return None if got == owner else f"answered {got!r}, but the prefix names {owner!r}"
    return None if got in SERVERS or not SERVERS else f"answered {got!r}, none of {SERVERS}"


CONTRACTS: dict[str, tuple[Callable[[int], dict[str, Any]], Check]] = {
    "echo": (lambda i: {"text": f"e{i}"}, equals(lambda o, i: f"e{i}")),
    "whoami": (lambda i: {}, owner_name),
    "add": (lambda i: {"a": 2, "b": i}, equals(lambda o, i: str(2 + i))),
    "sleep": (lambda i: {"ms": 1}, equals(lambda o, i: "slept")),
    "progress": (lambda i: {"count": 2, "interval_ms": 1}, equals(lambda o, i: "done")),
    "log": (lambda i: {"text": f"l{i}"}, equals(lambda o, i: "logged")),
    "notify": (lambda i: {"text": f"n{i}"}, equals(lambda o, i: "notified")),
    "stderr": (lambda i: {"lines": 1}, equals(lambda o, i: "wrote 1 lines")),
    "pid": (lambda i: {}, lambda r, o, i: None if ok_text(r).isdigit() else f"returned {texts(r)!r}"),
    "sample": (lambda i: {"prompt": f"p{i}"}, contains(lambda i: f"sampled:p{i}")),
    "elicit": (lambda i: {"message": f"m{i}"}, equals(lambda o, i: "accepted:peer")),
    "test_simple_text": (lambda i: {}, equals(lambda o, i: "This is a simple text response for testing.")),
    "test_image_content": (lambda i: {}, content_type("image")),
    "test_audio_content": (lambda i: {}, content_type("audio")),
    "test_embedded_resource": (lambda i: {}, content_type("resource")),
    "test_multiple_content_types": (lambda i: {}, content_type("text")),
    "test_tool_with_logging": (lambda i: {}, equals(lambda o, i: "Tool with logging executed successfully")),
    "test_error_handling": (lambda i: {}, is_error),
    "test_tool_with_progress": (lambda i: {}, equals(lambda o, i: "Tool with progress executed successfully")),
    "test_sampling": (lambda i: {"prompt": f"q{i}"}, contains(lambda i: f"LLM response: sampled:q{i}")),
    "test_elicitation": (lambda i: {"message": "who?"}, contains(lambda i: "action: accept")),
    "test_elicitation_sep1034_defaults": (lambda i: {}, contains(lambda i: "action=accept")),
    "test_elicitation_sep1330_enums": (lambda i: {}, contains(lambda i: "action=accept")),
    "json_schema_2020_12_tool": (lambda i: {"name": f"j{i}"}, contains(lambda i: f"name=j{i}")),
    "test_reconnection": (lambda i: {}, equals(lambda o, i: "Reconnection test completed")),
}
# Per-server names: the server they name is their owner.
OWNED = {
    re.compile(r"only_(.+)"): lambda x: x,
    re.compile(r"secret_(.+)"): lambda x: f"secret of {x}",
    re.compile(r"added_(.+)"): lambda x: x,
}
SKIP = {
    "change_tools": "changes the server's tool list under every other session",
    "crash": "ends the server process",
    "hang": "never answers",
    "stall_stdin": "stops the server reading its stdin for good",
}
# Handshake-era only: a server-to-client request with a raw schema (no 2026-07-28 form).
HANDSHAKE_ONLY = {"test_elicitation_sep1330_enums"}

SERVERS: list[str] = []
SEPARATOR = "__"


def split(name: str) -> tuple[str | None, str]:
    """(owner, base name) of a listed name."""
    for s in SERVERS:
        if name.startswith(s + SEPARATOR):
            return s, name[len(s) + len(SEPARATOR) :]
    return None, name


async def all_pages(fetch: Callable[..., Any], attr: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if cursor is None:
            return items
    raise StepFailed(f"{attr}: still a nextCursor after {MAX_PAGES} pages")


async def call_tools(client: Client, s: Session) -> None:
    i = s.index
    for name in s.tools:
        owner, base = split(name)
        if base in SKIP:
            s.skipped[f"tools/call {base}"] = SKIP[base]
            continue
        if base in HANDSHAKE_ONLY and s.version == MODERN:
            s.skipped[f"tools/call {base}"] = f"no {MODERN} form"
            continue
        contract = CONTRACTS.get(base)
        if contract is None:
            for pattern, want in OWNED.items():
                m = pattern.fullmatch(base)
                if m:
                    expect = want(m.group(1))
                    contract = (lambda i: {}, equals(lambda o, i, e=expect: e))
                    break
        if contract is None:
            s.skipped[f"tools/call {base}"] = "fed_client.py has no call contract for it"
            continue
        args, check = contract
        s.step = f"tools/call {name}"
        result = await client.call_tool(name, args(i))
        error = check(result, owner, i)
        if error:
            raise StepFailed(error)
        s.calls += 1


# greet, <server>_prompt and test_simple_prompt: the prompts that take no required argument.
PROMPTS = re.compile(r"greet|.+_prompt")


async def prompts(client: Client, s: Session) -> None:
    s.step = "prompts"
    listed = await all_pages(client.list_prompts, "prompts")
    for p in listed:
        owner, base = split(p.name)
        if not PROMPTS.fullmatch(base):
            continue
        s.step = f"prompts/get {p.name}"
        got = await client.get_prompt(p.name, {"who": "fed"} if base == "greet" else None)
        text = "".join(getattr(m.content, "text", "") or "" for m in got.messages)
        if base == "greet" and owner is not None and text != f"{owner} greets fed":
            raise StepFailed(f"answered {text!r}, but the prefix names {owner!r}")
        if not text:
            raise StepFailed("no text in the prompt's messages")


async def resources(client: Client, s: Session) -> None:
    s.step = "resources"
    listed = await all_pages(client.list_resources, "resources")
    for r in listed:
        uri = str(r.uri)
        s.step = f"resources/read {uri}"
        got = await client.read_resource(uri)
        if not got.contents:
            raise StepFailed("no contents")
        desc = r.description or ""
        m = re.search(r"(?:served by|readme of) ([a-z0-9_-]+)$", desc)
        if m:
            text = getattr(got.contents[0], "text", "") or ""
            if not text.endswith(f"of {m.group(1)}"):
                raise StepFailed(f"read {text!r}, but the listing says {desc!r}")


def check_listing(names: list[str], args: argparse.Namespace) -> None:
    seen: set[str] = set()
    twice: set[str] = set()
    for n in names:
        (twice if n in seen else seen).add(n)
    if twice:
        raise StepFailed(f"listed more than once: {sorted(twice)}")
    missing = sorted(set(args.require) - seen)
    if missing:
        raise StepFailed(f"tools/list lacks {missing} (has {sorted(seen)})")
    present = sorted(set(args.forbid) & seen)
    if present:
        raise StepFailed(f"tools/list has {present}, which it must not (has {sorted(seen)})")


async def steps(client: Client, s: Session, args: argparse.Namespace) -> None:
    if client.protocol_version == MODERN:
        # mode="2026-07-28" adopts a synthesized DiscoverResult; ask the real one.
        raw = await client.session.send_discover(MODERN)
        client.session.adopt(t.DiscoverResult.model_validate(raw))
    s.version = client.protocol_version
    s.step = "tools/list"
    s.tools = [tool.name for tool in await all_pages(client.list_tools, "tools")]
    check_listing(s.tools, args)
    await call_tools(client, s)
    await prompts(client, s)
    await resources(client, s)
    s.step = "close"


def describe(exc: BaseException) -> str:
    """One line naming every leaf exception (task groups wrap them in ExceptionGroups)."""
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, StepFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def bounded_steps(client: Client, s: Session, args: argparse.Namespace) -> str | None:
    """The steps inside the Client context, so a timeout still leaves it cleanly (DELETE)."""
    with anyio.move_on_after(args.timeout_s) as scope:
        try:
            await steps(client, s, args)
        except Exception as exc:  # noqa: BLE001 (every failure is reported, none escapes)
            return describe(exc)
    if scope.cancelled_caught:
        return f"timed out after {args.timeout_s} s"
    return None


async def run_session(index: int, args: argparse.Namespace, out: dict[int, tuple[Session, str | None]]) -> None:
    s = Session(index)
    error: str | None = None
    with anyio.move_on_after(args.timeout_s + CLOSE_GRACE_S) as outer:
        try:
            # Our own httpx2 client, to see the Mcp-Session-Id and the DELETE's answer;
            # trust_env=False keeps proxy variables from routing loopback traffic elsewhere.
            hc = httpx2.AsyncClient(
                timeout=httpx2.Timeout(args.timeout_s, read=SSE_READ_TIMEOUT_S),
                event_hooks={"response": [s.on_response]},
                trust_env=False,
            )
            async with hc:
                async with Client(
                    streamable_http_client(args.url, http_client=hc),
                    mode=args.mode,
                    sampling_callback=on_sampling,
                    elicitation_callback=on_elicitation,
                    read_timeout_seconds=args.timeout_s,
                    client_info=t.Implementation(name="shardcat-fed-client", version="1.0.0"),
                    cache=None,  # every list call goes to the wire
                ) as client:
                    error = await bounded_steps(client, s, args)
        except Exception as exc:  # noqa: BLE001
            error = error or describe(exc)
    if outer.cancelled_caught and error is None:
        error = f"timed out after {args.timeout_s + CLOSE_GRACE_S} s"
    if error is None and s.session_id is not None:
        s.step = "close"
        if s.delete_status is None:
            error = "no DELETE was sent for the session"
        elif s.delete_status not in (200, 405):
            error = f"DELETE answered HTTP {s.delete_status}"
    out[index] = (s, error)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[int, tuple[Session, str | None]] = {}
    async with anyio.create_task_group() as tg:
        for i in range(args.sessions):
            tg.start_soon(run_session, i, args, out)
    failed, skipped, versions = [], {}, set()
    for i in sorted(out):
        s, error = out[i]
        if error is not None:
            failed.append({"session": i, "step": s.step, "error": error})
        for step, reason in s.skipped.items():
            reasons = skipped.setdefault(step, [])
            if reason not in reasons:
                reasons.append(reason)
        if s.version:
            versions.add(s.version)
    first = out.get(0)
    return {
        "label": args.label,
        "mode": args.mode,
        "sessions": args.sessions,
        "passed": args.sessions - len(failed),
        "failed": failed,
        "skipped_steps": {step: "; ".join(r) for step, r in skipped.items()},
        "versions": sorted(versions),
        "tools": first[0].tools if first else [],
        "calls": sum(s.calls for s, _ in out.values()),
    }


def names(value: str) -> list[str]:
    return [n for n in value.split(",") if n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", choices=["legacy", "auto", MODERN], default="legacy")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--timeout-s", type=float, default=60.0)
    ap.add_argument("--servers", type=names, default=[])
    ap.add_argument("--separator", default="__")
    ap.add_argument("--require", type=names, default=[])
    ap.add_argument("--forbid", type=names, default=[])
    args = ap.parse_args()
    global SERVERS, SEPARATOR
    SERVERS, SEPARATOR = args.servers, args.separator
    report = anyio.run(run, args)
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["passed"] == args.sessions else 1)


if __name__ == "__main__":
    main()
