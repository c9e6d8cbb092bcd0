#!/usr/bin/env python3
"""Gateway RSS with many idle HTTP keep-alive connections.

Opens N TCP connections to the gateway, sends one valid stateless MCP 2026-07-28 tools/call on
each and reads its response (so each is an established keep-alive connection the gateway has
served), holds them idle, and prints the gateway's VmRSS: before (one request on a separate
connection, closed), with N idle connections, and after closing them all.

    taskset -c 1 target/release/shardcat demo-upstream --listen 127.0.0.1:0      # READY demo=URL
    taskset -c 0 target/release/shardcat serve --listen 127.0.0.1:0 --upstream URL \\
        --shards 1 --admin 127.0.0.1:0                                            # READY listen=...
    scripts/idle-conns.py 127.0.0.1:PORT GATEWAY_PID [-n 5000] [--admin 127.0.0.1:APORT]

Exits non-zero if any request failed or any connection was closed while it was meant to be idle.
"""

import argparse
import resource
import selectors
import socket
import sys
import time
import urllib.request

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo",'
    b'"arguments":{"text":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":'
    b'"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
)


def request_bytes(hostport):
    return (
        b"POST /mcp HTTP/1.1\r\n"
        b"Host: " + hostport.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\n"
        b"MCP-Protocol-Version: 2026-07-28\r\n"
        b"Mcp-Method: tools/call\r\n"
        b"Mcp-Name: echo\r\n"
        b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
        b"\r\n" + BODY
    )


def vmrss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_response(buf):
    """Returns (status, headers, body) once buf holds a whole Content-Length response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:
        raise RuntimeError(f"response without content-length: {lines}")
    n = int(headers["content-length"])
    if len(buf) < end + 4 + n:
        return None
    return status, headers, buf[end + 4 : end + 4 + n]


def check(resp):
    status, headers, body = resp
    ok = (
        status == 200
        and b'"text":"hello"' in body
        and b'"isError":false' in body
        and headers.get("connection", "").lower() != "close"
    )
    return ok, f"{status} {headers} {body[:200]!r}"


def one_request(host, port, hostport, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(request_bytes(hostport))
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed before a full response: {buf!r}")
            buf += chunk
            resp = parse_response(buf)
            if resp:
                ok, desc = check(resp)
                if not ok:
                    raise RuntimeError(f"bad response: {desc}")
                return
    finally:
        s.close()


def open_batch(host, port, req, count, timeout):
    """Opens count connections, sends one request on each, reads every response.
    Returns (sockets kept open, failure descriptions)."""
    socks = []
    failures = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except OSError as e:
            failures.append(f"connect: {e}")
            s.close()
            continue
        socks.append(s)
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        try:
            s.sendall(req)
        except OSError as e:
            failures.append(f"send: {e}")
            continue
        s.setblocking(False)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
    done = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                chunk = None
                failures.append(f"recv: {e}")
            if not chunk:
                if chunk is not None:
                    failures.append(f"closed before a full response: {pending[s]!r}")
                sel.unregister(s)
                del pending[s]
                s.close()
                continue
            pending[s] += chunk
            resp = parse_response(pending[s])
            if resp:
                ok, desc = check(resp)
                if not ok:
                    failures.append(f"bad response: {desc}")
                sel.unregister(s)
                del pending[s]
                done.append(s)
    for s in pending:
        failures.append("timed out waiting for a response")
        sel.unregister(s)
        s.close()
    sel.close()
    return done, failures


def still_open(socks):
    """Counts sockets whose peer has not closed them (recv would block, not return EOF)."""
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        n += 1
    return n


def gauge(admin, name):
    if not admin:
        return None
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=3) as r:
            # One series per shard: the gateway's figure is their sum.
            total = None
            for line in r.read().decode().splitlines():
                if line.startswith(name + '{') or line.startswith(name + ' '):
                    total = (total or 0) + float(line.split()[-1])
            return None if total is None else f"{total:g}"
    except OSError as e:
        return f"? ({e})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="gateway host:port (or http://host:port/mcp)")
    ap.add_argument("pid", type=int, help="gateway pid, for VmRSS")
    ap.add_argument("-n", "--conns", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=250, help="connections opened at a time")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before reading RSS")
    ap.add_argument("--hold", type=float, default=0.0, help="extra seconds to hold after reading")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--admin", help="gateway admin host:port, to report its connection gauge")
    a = ap.parse_args()

    hostport = a.target.removeprefix("http://").split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    port = int(port)
    req = request_bytes(hostport)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < want:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {a.conns} connections")

    one_request(host, port, hostport, a.timeout)
    time.sleep(0.5)
    rss_before = vmrss_kb(a.pid)
    fds_before = fd_count(a.pid)
    print(f"before: VmRSS {rss_before} kB ({rss_before / 1024:.1f} MB) after 1 request; "
          f"gateway fds {fds_before}; connections gauge {gauge(a.admin, 'shardcat_connections')}")

    socks, failures = [], []
    t0 = time.monotonic()
    while len(socks) + len(failures) < a.conns:
        n = min(a.batch, a.conns - len(socks) - len(failures))
        got, bad = open_batch(host, port, req, n, a.timeout)
        socks += got
        failures += bad
    t_open = time.monotonic() - t0
    time.sleep(a.settle)
    rss_idle = vmrss_kb(a.pid)
    fds_idle = fd_count(a.pid)
    open_now = still_open(socks)
    print(f"opened {len(socks)}/{a.conns} connections with one request each in {t_open:.1f}s; "
          f"{len(failures)} failures; {open_now} still open after {a.settle:.1f}s idle")
    print(f"idle:   VmRSS {rss_idle} kB ({rss_idle / 1024:.1f} MB) with {open_now} idle keep-alive "
          f"connections; gateway fds {fds_idle}; connections gauge "
          f"{gauge(a.admin, 'shardcat_connections')}")
    delta = rss_idle - rss_before
    if open_now:
        print(f"delta:  {delta} kB total, {delta * 1024 / open_now:.0f} bytes per idle connection")
    if a.hold > 0:
        time.sleep(a.hold)
    for s in socks:
        s.close()
    time.sleep(1.0)
    rss_after = vmrss_kb(a.pid)
    print(f"closed: VmRSS {rss_after} kB ({rss_after / 1024:.1f} MB) 1 s after closing them all; "
          f"gateway fds {fd_count(a.pid)}; connections gauge {gauge(a.admin, 'shardcat_connections')}")
    for f in failures[:10]:
        print(f"failure: {f}", file=sys.stderr)
    if failures or open_now != len(socks):
        sys.exit(1)


if __name__ == "__main__":
    main()
