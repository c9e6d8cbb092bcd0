"""auth_client.py: the official Python SDK client (`mcp` 2.x) against a gateway that requires
a bearer token, for shardcat's auth tests.

    auth_client.py --url URL [--token TOKEN] [--timeout-s 30]

With --token: the SDK client sends `Authorization: Bearer TOKEN` on every request (through
its httpx client), initializes, lists tools and calls echo. Without: the SDK client's
connection must fail on the 401; then the challenge's header and the protected resource
metadata (fetched at the gateway's well-known path) are reported.

stdout: one JSON line: {"ok": bool, "tools": [...], "echo": str, "status": int,
"www_authenticate": str, "metadata": {...}, "error": str}
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from urllib.parse import urlsplit

import anyio
import httpx2

from mcp import Client
from mcp.client.streamable_http import streamable_http_client

warnings.filterwarnings("ignore", category=DeprecationWarning)


async def with_token(args: argparse.Namespace) -> dict:
    headers = {"authorization": f"Bearer {args.token}"}
    hc = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(args.timeout_s), trust_env=False)
    async with hc:
        async with Client(streamable_http_client(args.url, http_client=hc), mode="legacy") as client:
            tools = await client.list_tools()
            res = await client.call_tool("echo", {"text": "hello-auth"})
            text = "".join(getattr(c, "text", "") for c in res.content)
            return {"ok": True, "tools": [t.name for t in tools.tools], "echo": text}


async def without_token(args: argparse.Namespace) -> dict:
    out: dict = {"ok": False}
    hc = httpx2.AsyncClient(timeout=httpx2.Timeout(args.timeout_s), trust_env=False)
    async with hc:
        try:
            async with Client(streamable_http_client(args.url, http_client=hc), mode="legacy") as client:
                await client.list_tools()
            out["error"] = "connected without a token"
            return out
        except BaseException as exc:  # noqa: BLE001 (the refusal is what we expect)
            out["error"] = f"{type(exc).__name__}: {exc}"[:300]
        # What the SDK was refused with, and where the metadata is.
        r = await hc.post(
            args.url,
            headers={"accept": "application/json, text/event-stream", "content-type": "application/json"},
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        )
        out["status"] = r.status_code
        out["www_authenticate"] = r.headers.get("www-authenticate", "")
        u = urlsplit(args.url)
        m = await hc.get(f"{u.scheme}://{u.netloc}/.well-known/oauth-protected-resource{u.path}")
        out["metadata"] = m.json() if m.status_code == 200 else {"status": m.status_code}
        out["ok"] = r.status_code == 401
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token")
    ap.add_argument("--timeout-s", type=float, default=30.0)
    args = ap.parse_args()

    async def run() -> dict:
        with anyio.fail_after(args.timeout_s * 2):
            return await (with_token(args) if args.token else without_token(args))

    try:
        out = anyio.run(run)
    except BaseException as exc:  # noqa: BLE001
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(out))
    sys.exit(0 if out.get("ok") else 1)


if __name__ == "__main__":
    main()
