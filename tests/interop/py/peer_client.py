"""peer_client.py: drives N concurrent sessions of the official Python SDK client (`mcp` 2.x,
`Client`) against one MCP server, the Python client of shardcat's interop tests.

    peer_client.py --mode legacy|auto|2026-07-28 --sessions N [--label NAME] [--timeout-s 60]
                 (--url URL | --stdio CMD [ARGS...])
(--stdio comes last: every word after it is CMD and its arguments.)

Each session, in order (the step names are the ones reported on failure):
  connect    initialize (legacy), discover-or-initialize (auto), or server/discover (2026-07-28),
             declaring sampling ("sampled:<prompt>") and elicitation (accept {"name": "peer"})
  tools/list must list echo and progress
  echo       echo {text: "hello-<i>"} must come back unchanged
  progress   progress {count: 3, interval_ms: 20}: exactly 3 notifications (1, 2, 3 of 3), "done"
             (or the demo's "sent 3 progress notifications")
  sample     sample {prompt: "p<i>"} must contain "sampled:p<i>" (in 2026-07-28 through an
             input-required round trip); with --handshake-server, a 2026-07-28 session instead
             expects the gateway's refusal of the server's sampling request
  notify     handshake-era only: notify {text: "n<i>"} up to 10 times, 300 ms apart, until that
             notifications/message arrives (without a notify tool: any notifications/message
             within 5 s, which shardcat's demo pushes every second on the GET stream)
  close      leave the Client: on Streamable HTTP with a session, a DELETE must be sent and
             answered 200 (or 405, the spec's "termination not allowed")
A skipped step is named in skipped_steps with its reason. Every wait is bounded by --timeout-s
per session (plus a grace for close); a timeout fails the session at the step it was in.

stdout: exactly one JSON line at the end:
  {"label", "mode", "sessions", "passed", "failed": [{"session", "step", "error"}],
   "skipped_steps": {step: reason}, "versions": [negotiated versions]}
Exit status 0 iff every session passed. With --stdio each session spawns CMD as its own stdio
server (its stderr is passed through to ours).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

import mcp_types as t
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

# Logging/sampling are deprecated by 2026-07-28 (SEP-2577) but are what the handshake era uses.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")

MODERN = "2026-07-28"
CLOSE_GRACE_S = 10.0  # leaving the Client (DELETE, child exit) gets this much past --timeout-s
PROGRESS_GRACE_S = 1.0  # late progress notifications are waited for this long after the result
NOTIFY_TRIES, NOTIFY_GAP_S, DEMO_WAIT_S = 10, 0.3, 5.0
# httpx read timeout: an idle GET stream may stay silent for long; our own scopes bound the steps.
SSE_READ_TIMEOUT_S = 300.0


class StepFailed(Exception):
    pass


@dataclass
class Session:
    """What one session saw; the HTTP fields are filled by httpx2 response hooks."""

    index: int
    step: str = "connect"
    version: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None  # Mcp-Session-Id the server issued, if any
    delete_status: int | None = None
    progress: list[tuple[float, float | None]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    log_arrived: anyio.Event = field(default_factory=anyio.Event)

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and self.session_id is None:
            self.session_id = sid
        if response.request.method == "DELETE":
            self.delete_status = response.status_code

    async def on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        self.logs.append(params.data)
        self.log_arrived.set()

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total))


def _prompt_text(params: t.CreateMessageRequestParams) -> str:
    content = params.messages[-1].content if params.messages else None
    blocks = content if isinstance(content, list) else [content]
    return "".join(getattr(b, "text", "") or "" for b in blocks)


async def on_sampling(ctx: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    text = f"sampled:{_prompt_text(params)}"
    return t.CreateMessageResult(
        role="assistant", content=t.TextContent(type="text", text=text), model="peer-model", stop_reason="endTurn"
    )


async def on_elicitation(ctx: Any, params: Any) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"name": "peer"})


# --handshake-server: the server speaks only the handshake era (through the gateway a
# 2026-07-28 client still reaches it, translated), so its sampling request must be refused.
HANDSHAKE_SERVER = False
# What the gateway answers such a request with.
REFUSAL = "not available to a 2026-07-28 client through the gateway"


def result_text(result: t.CallToolResult) -> str:
    text = "".join(getattr(b, "text", "") or "" for b in result.content)
    if result.is_error:
        raise StepFailed(f"tool returned isError: {text!r}")
    return text


def describe(exc: BaseException) -> str:
    """One line naming every leaf exception (task groups wrap them in ExceptionGroups)."""
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, StepFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def steps(client: Client, s: Session, http: bool) -> None:
    i = s.index
    if client.protocol_version == MODERN:
        # mode="2026-07-28" adopts a synthesized DiscoverResult without any traffic; ask the
        # server for the real one so `connect` means the server answered.
        raw = await client.session.send_discover(MODERN)
        client.session.adopt(t.DiscoverResult.model_validate(raw))
    s.version = client.protocol_version
    modern = s.version == MODERN
    # Handshake-era HTTP without a session id (a stateless server) has no GET stream and no
    # channel for the client's answer to a server-to-client request.
    no_channel = http and not modern and s.session_id is None

    s.step = "tools/list"
    names = {tool.name for tool in (await client.list_tools()).tools}
    missing = {"echo", "progress"} - names
    if missing:
        raise StepFailed(f"tools/list lacks {sorted(missing)} (has {sorted(names)})")

    s.step = "echo"
    got = result_text(await client.call_tool("echo", {"text": f"hello-{i}"}))
    if got != f"hello-{i}":
        raise StepFailed(f"echo returned {got!r}")

    s.step = "progress"
    got = result_text(
        await client.call_tool("progress", {"count": 3, "interval_ms": 20}, progress_callback=s.on_progress)
    )
    with anyio.move_on_after(PROGRESS_GRACE_S):
        while len(s.progress) < 3:
            await anyio.sleep(0.01)
    # "done" is the test servers' contract; shardcat's built-in demo words its result itself.
    if got not in ("done", "sent 3 progress notifications") or s.progress != [(1, 3), (2, 3), (3, 3)]:
        raise StepFailed(f"progress returned {got!r} after notifications {s.progress}")

    s.step = "sample"
    if "sample" not in names:
        s.skipped["sample"] = "server does not list a sample tool"
    elif no_channel:
        s.skipped["sample"] = "handshake-era HTTP without Mcp-Session-Id: no channel for server-to-client requests"
    elif modern and HANDSHAKE_SERVER:
        # 2026-07-28 has no server-to-client requests and this server knows no other way to
        # ask: the gateway must refuse its sampling request at once (the tool fails), not let
        # it hang until a timeout.
        res = await client.call_tool("sample", {"prompt": f"p{i}"})
        text = "".join(getattr(b, "text", "") or "" for b in res.content)
        if not (res.is_error and REFUSAL in text):
            raise StepFailed(f"sample on a handshake-era server returned {text!r}, not the refusal")
        s.skipped["sample"] = "handshake-era server: the gateway refused its sampling request (checked)"
    else:
        got = result_text(await client.call_tool("sample", {"prompt": f"p{i}"}))
        if f"sampled:p{i}" not in got:
            raise StepFailed(f"sample returned {got!r}")

    s.step = "notify"
    if modern:
        s.skipped["notify"] = f"{MODERN} has no standalone stream (no session-level notifications)"
    elif no_channel:
        s.skipped["notify"] = "handshake-era HTTP without Mcp-Session-Id: no standalone GET stream"
    elif "notify" in names:
        want = f"n{i}"
        for _ in range(NOTIFY_TRIES):
            result_text(await client.call_tool("notify", {"text": want}))
            with anyio.move_on_after(NOTIFY_GAP_S):
                while want not in s.logs:
                    s.log_arrived = anyio.Event()
                    await s.log_arrived.wait()
            if want in s.logs:
                break
        else:
            raise StepFailed(f"no notifications/message {want!r} after {NOTIFY_TRIES} notify calls (saw {s.logs[-5:]})")
    else:
        with anyio.move_on_after(DEMO_WAIT_S):
            while not s.logs:
                await s.log_arrived.wait()
        if not s.logs:
            raise StepFailed(f"no notifications/message within {DEMO_WAIT_S} s (server lists no notify tool)")

    s.step = "close"


async def run_session(index: int, args: argparse.Namespace, out: dict[int, tuple[Session, str | None]]) -> None:
    s = Session(index)
    error: str | None = None
    kwargs: dict[str, Any] = dict(
        mode=args.mode,
        sampling_callback=on_sampling,
        elicitation_callback=on_elicitation,
        logging_callback=s.on_log,
        read_timeout_seconds=args.timeout_s,
        client_info=t.Implementation(name="shardcat-py-peer-client", version="1.0.0"),
        cache=None,  # every list call goes to the wire
    )
    http = args.url is not None
    with anyio.move_on_after(args.timeout_s + CLOSE_GRACE_S) as outer:
        try:
            if http:
                # Our own httpx2 client, to see the Mcp-Session-Id and the DELETE's answer;
                # trust_env=False keeps proxy variables from routing loopback traffic elsewhere.
                hc = httpx2.AsyncClient(
                    timeout=httpx2.Timeout(args.timeout_s, read=SSE_READ_TIMEOUT_S),
                    event_hooks={"response": [s.on_response]},
                    trust_env=False,
                )
                async with hc:
                    async with Client(streamable_http_client(args.url, http_client=hc), **kwargs) as client:
                        error = await bounded_steps(client, s, args, http=True)
            else:
                params = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:])
                async with Client(params, **kwargs) as client:
                    error = await bounded_steps(client, s, args, http=False)
        except Exception as exc:  # noqa: BLE001 (every failure is reported, none escapes)
            error = error or describe(exc)
    if outer.cancelled_caught and error is None:
        error = f"timed out after {args.timeout_s + CLOSE_GRACE_S} s"
    if error is None and http and s.session_id is not None:
        # Leaving the Client sends the DELETE; check it happened and was accepted.
        s.step = "close"
        if s.delete_status is None:
            error = "no DELETE was sent for the session"
        # The spec's answers: 200, or 405 when the server does not let clients end sessions
        # (the Python SDK reports "Session termination failed" on anything else, 202 included).
        elif s.delete_status not in (200, 405):
            error = f"DELETE answered HTTP {s.delete_status}"
    out[index] = (s, error)


async def bounded_steps(client: Client, s: Session, args: argparse.Namespace, http: bool) -> str | None:
    """Runs the steps inside the Client context so a timeout still leaves it cleanly (DELETE)."""
    with anyio.move_on_after(args.timeout_s) as scope:
        try:
            await steps(client, s, http)
        except Exception as exc:  # noqa: BLE001
            return describe(exc)
    if scope.cancelled_caught:
        return f"timed out after {args.timeout_s} s"
    return None


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
    return {
        "label": args.label,
        "mode": args.mode,
        "sessions": args.sessions,
        "passed": args.sessions - len(failed),
        "failed": failed,
        "skipped_steps": {step: "; ".join(r) for step, r in skipped.items()},
        "versions": sorted(versions),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--url")
    target.add_argument("--stdio", nargs="*", metavar="CMD")
    ap.add_argument("--mode", choices=["legacy", "auto", MODERN], required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--timeout-s", type=float, default=60.0)
    ap.add_argument("--handshake-server", action="store_true")
    # --stdio takes everything after it as CMD ARGS (its own flags and a `--`, as in
    # `shardcat forward stdio -- CMD`, included), so our options must come before it. The
    # command is split off by hand: argparse's REMAINDER mishandles a `--` inside it.
    argv = sys.argv[1:]
    cmd = None
    if "--stdio" in argv:
        at = argv.index("--stdio")
        argv, cmd = argv[: at + 1], argv[at + 1 :]
    args = ap.parse_args(argv)
    global HANDSHAKE_SERVER
    HANDSHAKE_SERVER = args.handshake_server
    if cmd is not None:
        if not cmd:
            ap.error("--stdio needs a command")
        args.stdio = cmd
    report = run_report(args)
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["passed"] == args.sessions else 1)


def run_report(args: argparse.Namespace) -> dict[str, Any]:
    return anyio.run(run, args)


if __name__ == "__main__":
    main()
