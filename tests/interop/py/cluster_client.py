"""cluster_client.py: N concurrent sessions of the official Python SDK client (`mcp` 2.x,
`Client` over Streamable HTTP, handshake era) calling `echo` at a steady pace through a shardcat
cluster while a node may be killed under them: the Python client of tests/cluster.rs.

    cluster_client.py --url URL [--sessions N] [--interval-ms 100] [--duration-s 8]
                      [--label NAME] [--connect-timeout-s 20] [--call-timeout-s 5]
                      [--post-errors-as-502] [--stop-file PATH]

Each session connects (initialize; the SDK then opens the standalone GET stream itself, after
notifications/initialized, and reconnects it with Last-Event-ID when it breaks). Once every
session is connected (or --connect-timeout-s passed), each one calls `echo` every --interval-ms
until --duration-s is over (or, sooner, --stop-file exists), each call bounded by --call-timeout-s, and counts the
`notifications/message` of the GET stream (the demo upstream's `params.data.seq`). Then it
leaves the Client, which sends DELETE.

The SDK (2.3.0) runs each request's POST as a task of the transport's task group and catches no
transport error there: a POST whose connection is cut without a response (a node SIGKILLed
behind HAProxy) raises httpx2.RemoteProtocolError out of that group, which ends the whole
Client, its GET stream and its session with it (no DELETE). Such a session reports that error.
--post-errors-as-502 is the application-side workaround: our httpx2 transport answers a POST
that failed at the transport level with a synthetic HTTP 502, which the SDK turns into an
error of that one call ("Server returned an error response"); the session goes on.

stdout: exactly one JSON line at the end:
  {"label", "sdk": "python", "sessions", "connected", "t0_ms", "bucket_ms",
   "per_session": [{
     "index", "error" (connect or close failure, or null),
     "sid_start", "sid_end" (the id the transport still sends), "sids_sent" (distinct ids sent),
     "initializes" (initialize POSTs sent), "delete_status",
     "ok", "failed", "failures": [[start_ms, end_ms, "error"], ...] (first 20),
     "first_ok_ms", "last_ok_ms",
     "ok_buckets", "failed_buckets" (calls by start time, bucket_ms wide from t0_ms),
     "gets": [[t_ms, last_event_id or null, status or "error"], ...] (GET stream opens, first 10),
     "seq": {"count", "first", "last", "unique", "duplicates", "contiguous",
             "gaps": [[from, to], ...] (missing ranges, first 10),
             "max_silence_ms", "max_silence_at_ms" (when the longest silence began),
             "last_at_ms" (when the last one came)}}]}
Times are unix milliseconds. Diagnostics go to stderr. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

import mcp_types as t
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")

CLOSE_GRACE_S = 10.0  # leaving the Client (DELETE) gets this much
SSE_READ_TIMEOUT_S = 300.0  # the GET stream may be silent; our own scopes bound every step
MAX_LISTED = 20


def now_ms() -> int:
    return int(time.time() * 1000)


def log(*a: Any) -> None:
    print("cluster_client.py:", *a, file=sys.stderr, flush=True)


@dataclass
class Session:
    index: int
    error: str | None = None
    sid_start: str | None = None
    sids_sent: list[str] = field(default_factory=list)
    initializes: int = 0
    delete_status: int | None = None
    ok: int = 0
    failed: int = 0
    failures: list[list[Any]] = field(default_factory=list)
    first_ok_ms: int | None = None
    last_ok_ms: int | None = None
    ok_starts: list[int] = field(default_factory=list)
    failed_starts: list[int] = field(default_factory=list)
    gets: list[list[Any]] = field(default_factory=list)
    seqs: list[tuple[int, int]] = field(default_factory=list)  # (seq, arrival ms)
    connected: bool = False

    async def on_request(self, request: httpx2.Request) -> None:
        sid = request.headers.get("mcp-session-id")
        if sid and sid not in self.sids_sent:
            self.sids_sent.append(sid)
        if request.method == "POST":
            try:
                body = json.loads(request.content or b"{}")
            except ValueError:
                body = {}
            if isinstance(body, dict) and body.get("method") == "initialize":
                self.initializes += 1
        elif request.method == "GET" and len(self.gets) < 10:
            self.gets.append([now_ms(), request.headers.get("last-event-id"), "sent"])

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid and self.sid_start is None:
            self.sid_start = sid
        if response.request.method == "DELETE":
            self.delete_status = response.status_code
        elif response.request.method == "GET":
            for g in reversed(self.gets):
                if g[2] == "sent":
                    g[2] = response.status_code
                    break

    async def on_log(self, params: t.LoggingMessageNotificationParams) -> None:
        data = params.data
        if isinstance(data, dict) and isinstance(data.get("seq"), int):
            self.seqs.append((data["seq"], now_ms()))


class PostErrorsAs502(httpx2.AsyncHTTPTransport):
    """A POST that fails at the transport level answers 502 instead (see --post-errors-as-502)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await super().handle_async_request(request)
        except httpx2.TransportError as exc:
            if request.method != "POST":
                raise
            log(f"POST failed at the transport level, answered 502: {describe(exc)}")
            return httpx2.Response(502, request=request, text=f"transport error: {exc}")


def seq_summary(seqs: list[tuple[int, int]]) -> dict[str, Any]:
    values = [q for q, _ in seqs]
    unique = sorted(set(values))
    gaps = [[a + 1, b - 1] for a, b in zip(unique, unique[1:]) if b > a + 1]
    silence, at = 0, None
    for (_, a), (_, b) in zip(seqs, seqs[1:]):
        if b - a > silence:
            silence, at = b - a, a
    return {
        "count": len(values),
        "first": unique[0] if unique else None,
        "last": unique[-1] if unique else None,
        "unique": len(unique),
        "duplicates": len(values) - len(unique),
        "contiguous": not gaps,
        "gaps": gaps[:10],
        "max_silence_ms": silence,
        "max_silence_at_ms": at,
        "last_at_ms": seqs[-1][1] if seqs else None,
    }


def buckets(starts: list[int], t0: int, width: int, n: int) -> list[int]:
    out = [0] * n
    for s in starts:
        out[min(n - 1, max(0, (s - t0) // width))] += 1
    return out


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:300]


async def calls(client: Client, s: Session, args: argparse.Namespace, start: anyio.Event, clock: dict) -> None:
    await start.wait()
    deadline = clock["t0"] + args.duration_s * 1000
    k = 0
    while now_ms() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
        begun = now_ms()
        k += 1
        text = f"py{s.index}-{k}"
        error = None
        try:
            with anyio.fail_after(args.call_timeout_s):
                r = await client.call_tool("echo", {"text": text})
            got = "".join(getattr(b, "text", "") or "" for b in r.content)
            if r.is_error or got != text:
                error = f"echo answered {got!r} (isError {r.is_error})"
        except TimeoutError:
            error = f"no answer within {args.call_timeout_s} s"
        except Exception as exc:  # noqa: BLE001 (every failure is counted, none escapes)
            error = describe(exc)
        ended = now_ms()
        if error is None:
            s.ok += 1
            s.ok_starts.append(begun)
            s.first_ok_ms = s.first_ok_ms or ended
            s.last_ok_ms = ended
        else:
            s.failed += 1
            s.failed_starts.append(begun)
            if len(s.failures) < MAX_LISTED:
                s.failures.append([begun, ended, error])
        await anyio.sleep(max(0, begun + args.interval_ms - now_ms()) / 1000)


async def run_session(
    s: Session, args: argparse.Namespace, connected: list[int], all_in: anyio.Event, start: anyio.Event, clock: dict
) -> None:
    with anyio.move_on_after(args.connect_timeout_s + args.duration_s + args.call_timeout_s + CLOSE_GRACE_S) as outer:
        try:
            hc = httpx2.AsyncClient(
                timeout=httpx2.Timeout(args.call_timeout_s, read=SSE_READ_TIMEOUT_S),
                event_hooks={"request": [s.on_request], "response": [s.on_response]},
                trust_env=False,
                transport=PostErrorsAs502() if args.post_errors_as_502 else None,
            )
            async with hc:
                async with Client(
                    streamable_http_client(args.url, http_client=hc),
                    mode="legacy",
                    logging_callback=s.on_log,
                    read_timeout_seconds=args.call_timeout_s,
                    client_info=t.Implementation(name=f"shardcat-cluster-client-py-{s.index}", version="1.0.0"),
                    cache=None,
                ) as client:
                    s.connected = True
                    connected[0] += 1
                    if connected[0] == args.sessions:
                        all_in.set()
                    await calls(client, s, args, start, clock)
        except Exception as exc:  # noqa: BLE001
            s.error = s.error or describe(exc)
            if not s.connected:
                connected[1] += 1
                if connected[0] + connected[1] == args.sessions:
                    all_in.set()
    if outer.cancelled_caught and s.error is None:
        s.error = "timed out"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sessions = [Session(i) for i in range(args.sessions)]
    connected = [0, 0]  # connected, failed to connect
    all_in, start = anyio.Event(), anyio.Event()
    clock: dict[str, int] = {"t0": 0}
    async with anyio.create_task_group() as tg:
        for s in sessions:
            tg.start_soon(run_session, s, args, connected, all_in, start, clock)
        with anyio.move_on_after(args.connect_timeout_s):
            await all_in.wait()
        clock["t0"] = now_ms()
        log(f"{connected[0]} of {args.sessions} sessions connected; calling for {args.duration_s} s")
        start.set()
    t0, width = clock["t0"], args.bucket_ms
    n = max(1, (args.duration_s * 1000 + args.call_timeout_s * 1000) // width + 1)
    per = []
    for s in sessions:
        per.append(
            {
                "index": s.index,
                "error": s.error,
                "sid_start": s.sid_start,
                "sid_end": s.sids_sent[-1] if s.sids_sent else None,
                "sids_sent": len(s.sids_sent),
                "initializes": s.initializes,
                "delete_status": s.delete_status,
                "ok": s.ok,
                "failed": s.failed,
                "failures": s.failures,
                "first_ok_ms": s.first_ok_ms,
                "last_ok_ms": s.last_ok_ms,
                "ok_buckets": buckets(s.ok_starts, t0, width, int(n)),
                "failed_buckets": buckets(s.failed_starts, t0, width, int(n)),
                "gets": s.gets,
                "seq": seq_summary(s.seqs),
            }
        )
    return {
        "label": args.label,
        "sdk": "python",
        "post_errors_as_502": args.post_errors_as_502,
        "sessions": args.sessions,
        "connected": connected[0],
        "t0_ms": t0,
        "bucket_ms": width,
        "per_session": per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--interval-ms", type=int, default=100)
    ap.add_argument("--duration-s", type=int, default=8)
    ap.add_argument("--bucket-ms", type=int, default=500)
    ap.add_argument("--label", default="")
    ap.add_argument("--connect-timeout-s", type=float, default=20.0)
    ap.add_argument("--call-timeout-s", type=float, default=5.0)
    ap.add_argument("--post-errors-as-502", action="store_true")
    ap.add_argument("--stop-file", default=None)
    args = ap.parse_args()
    report = anyio.run(run, args)
    print(json.dumps(report, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
