#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the project's own fixtures: heads and
bodies as tests/*.rs send them, a tape segment as tape::format writes it, the README's config.
Each seed carries the target's input prefix (fuzz/checks/<target>.rs says which). Run it
again after changing a prefix: python3 fuzz/seeds.py"""
import os, re, struct, zlib, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


SID = b"0100000000f6d87be531cf2719d9b3b12d919201e4"
POST = (b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\n"
        b"accept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n"
        b"mcp-session-id: " + SID + b"\r\ncontent-length: 42\r\n\r\n")
REQUESTS = {
    "post": POST,
    "get-resume": b"GET /mcp HTTP/1.1\r\nHost: localhost:8080\r\nAccept: text/event-stream\r\n"
                  b"Mcp-Session-Id: " + SID + b"\r\nLast-Event-ID: 3-9\r\n\r\n",
    "delete": b"DELETE /mcp HTTP/1.1\r\nHost: [::1]:8080\r\nMcp-Session-Id: " + SID + b"\r\n\r\n",
    "chunked-origin": b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://localhost:3000\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
    "stateless": b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com:8443\r\nOrigin: https://app.example.com\r\n"
                 b"Mcp-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n"
                 b"Mcp-Name: =?base64?ZWNobw==?=\r\nContent-Length: 3, 3\r\nExpect: 100-continue\r\n\r\n",
    "http10": b"GET /mcp HTTP/1.0\nConnection: keep-alive\n\n",
}
# Limits selectors 0xffff/0xff (65535 bytes, 128 fields), policy 0 (loopback), cuts 16, 32.
for i, (name, head) in enumerate(REQUESTS.items()):
    write("request_head", name, b"\xff\xff\xff" + bytes([i % 3]) + b"\x10\x00\x20\x00" + head)

RESPONSES = {
    "json": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: abc\r\ncontent-length: 36\r\n\r\n",
    "sse": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n",
    "accepted": b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
    "no-content": b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
    "close": b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n",
    "not-found": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\n",
}
for name, head in RESPONSES.items():
    write("response_head", name, b"\xff\xff\xff\x00\x10\x00" + head)


def chunked(*parts, trailer=b""):
    out = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts)
    return out + b"0\r\n" + trailer + b"\r\n"


CHUNKED = {
    "two": chunked(b"hello ", b"x" * 300),
    "ext-trailer": b"3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    "sse-events": chunked(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n", b": keepalive\n\n"),
    "bare-lf": b"5\nhello\n0\n\n",
}
for name, body in CHUNKED.items():
    write("chunked", name, b"\x00" + body)
    write("body", "chunked-" + name, b"\x02\x00\x00\x00" + body + b"GET / HTTP/1.1\r\n\r\n")
write("body", "length", b"\x01\x2a\x00\x00" + b'{"jsonrpc":"2.0","id":1,"method":"ping"}xxGET')
write("body", "close", b"\x03\x00\x00\x00data: x\n\n")
write("body", "none", b"\x00\x00\x00\x00GET / HTTP/1.1\r\n\r\n")

SSE = {
    "message": b"event: message\nid: 7\nretry: 250\n: note\ndata: {\"a\":\ndata:1}\n\n",
    "line-endings": b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n",
    "priming": b"id: 0\ndata:\n\nid: 1\r\ndata: x\r\n\r\n: keepalive\n\nevent: m\ndata: y\n\n",
    "retry": b"retry: 3000\n\nid\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
}
for name, s in SSE.items():
    write("sse", name, b"\xff\x00" + s)

BODIES = {
    "initialize": b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"1"}}}',
    "tools-call-progress": b'{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},"_meta":{"progressToken":"tok-1"}}}',
    "resources-read": b'{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///a"}}',
    "stateless": b'{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}',
    "batch": b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]',
    "response": b'{"jsonrpc":"2.0","id":"srv-1","result":{"content":[]}}',
    "error": b'{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}',
    "pretty": b'{\n "jsonrpc": "2.0",\r\n "id": 7, "method": "ping"}',
    "cancel": b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1","reason":"x"}}',
}
for i, (name, b) in enumerate(BODIES.items()):
    write("jsonrpc", name, struct.pack("<Q", 42) + bytes([i % 3]) + b)

LINES = b"\n".join(BODIES.values()) + b"\r\n\n   \n" + b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}\n'
write("stdio_lines", "session", b"\xff\x00" + LINES)
write("stdio_lines", "small-bound", b"\x20\x00" + LINES)

write("session_id", "valid", SID)
write("session_id", "upper", SID.upper())
# cluster_seal: mode byte (0 token, 1 claims to seal, 2 claims plaintext), then the data. The
# tokens were sealed under fuzz/checks/cluster_seal.rs's keys (CURRENT, then PREVIOUS).
TOKENS = {
    "one-member": b"AQIBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEud2eROrjiwdFF3LQ4BWsDGx3LD8JHyRLJBsCz2cXIF-HTdh6-cKoDDAAbsJrcvmUm1SDWMMRXuA38NbmSkw8rB7ezayE",
    "three-subject": b"AQICAgICAgICAgICAgICAgICAgICAgICAgKiVxW1RGlfvyO9Kd-40tbtnnlmFWn7tnTs0EXWtIZwUaTm2aUeNi4u8SON4sJlR3b-hC5w9gy6MET-VnP8o1aEOjK-Xg",
    "previous-key": b"AZ8DAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwO9RGhITbggjpQ6x6sK7YTAy8Ffu0tZ8RKRVhDfbk0",
    "pinned": b"gw-1." + SID,
    "plain": SID,
}
for name, t in TOKENS.items():
    write("cluster_seal", name, b"\x00" + t)


def claims(node, shard, version, issued, subject, members):
    opt = lambda v: b"\x00" if v is None else b"\x01" + bytes([len(v)]) + v
    out = bytes([len(node)]) + node + bytes([shard, version]) + struct.pack("<Q", issued)
    out += opt(subject) + bytes([len(members)])
    return out + b"".join(bytes([srv, up]) + opt(sid) for srv, up, sid in members)


write("cluster_seal", "plain-one", b"\x02" + claims(b"gw-1", 1, 2, 1796000000, None, [(0, 0, b"8f2b6c1e4d3a4b5c9e7f0a1b2c3d4e5f")]))
write("cluster_seal", "plain-three", b"\x02" + claims(b"gw-eu-2", 0, 4, 7, b"alice", [(0, 0, b"a1"), (1, 0, None), (2, 1, b"x")]))
write("cluster_seal", "seal-bytes", b"\x01" + bytes(range(0, 256, 5)))
write("cluster_seal", "seal-many", b"\x01\x00\x04\x00\x01\x02\x03\x40" + bytes([1, 2, 1, 0, 32] + [7] * 32) * 8)
for name, v in {"plain": b"3-9", "spaces": b" 12-0 ", "big": b"4294967295-18446744073709551615", "foreign": b"17"}.items():
    write("last_event_id", name, v)

# A segment as tape::format::encode writes it (frames like format.rs's tests).
def record(session, ts, dir_, kind, flags, status, stream, eid, payload):
    body = struct.pack("<QQBBBBHHI", session, ts, dir_, kind, flags, 0, status, len(eid), stream) + eid + payload
    return struct.pack("<II", len(body), zlib.crc32(body)) + body

seg = b"SHCTAPE\0" + struct.pack("<II", 1, 0)
seg += record(7, 1, 2, 0, 0, 0, 0, b"", b'{"upstream":"http://u/mcp"}')
seg += record(7, 2, 0, 2, 0, 0, 3, b"", b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
seg += record(7, 3, 1, 2, 1, 200, 3, b"ev-1", b'{"jsonrpc":"2.0","id":1,"result":{}}')
seg += record(2**64 - 1, 2**64 - 1, 1, 3, 0, 202, 2**32 - 1, b"", b"")
seg += record(7, 9, 2, 1, 0, 0, 0, b"", b'{"reason":"delete"}')
write("tape_segment", "segment", b"\x00" + seg)
write("tape_segment", "torn", b"\x00" + seg[:-7])
write("tape_segment", "corrupt", b"\x00" + seg[:40] + b"\xff" + seg[41:])
write("tape_segment", "frames", b"\x01" + bytes(range(0, 200, 3)))

readme = open(os.path.join(ROOT, "README.md")).read()
toml = re.search(r"## Configuration.*?```toml\n(.*?)```", readme, re.S).group(1)
write("config", "readme", toml.encode())
write("config", "stdio", b'[upstream]\nkind = "stdio"\ncommand = "python3"\nargs = ["-m", "server"]\nprewarm = 1\n[upstream.env]\nA = "1"\n')
write("config", "several", b'[[upstream]]\nurl = "http://127.0.0.1:9001/mcp"\nweight = 3\n[[upstream]]\nurl = "http://127.0.0.1:9002/mcp"\nhealth_check = "http"\nhealth_path = "/healthz"\n[tapes]\ndir = "/tmp/t"\nmask = ["/params/arguments/password"]\n')
write("config", "federation", b'[gateway]\nlisten = "127.0.0.1:8080"\n[[server]]\nname = "gh"\nurl = "http://127.0.0.1:9001/mcp"\nprefix = "always"\ntools = { include = ["search_*"], exclude = ["search_x"] }\n[[server]]\nname = "rep"\n[[server.replica]]\nurl = "http://127.0.0.1:9002/mcp"\nweight = 2\n[[server.replica]]\nurl = "http://127.0.0.1:9003/mcp"\n[[server]]\nname = "files"\ncommand = "srv"\nargs = ["-v"]\n[server.env]\nA = "1"\n[[route]]\npath = "/mcp"\nservers = ["gh", "rep"]\n[[route]]\npath = "/mcp/dev"\nservers = ["files", "gh"]\n[federation]\nseparator = "."\nfailure_mode = "closed"\nmax_names = 100\nmax_list_pages = 2\n')

# authz_glob: mode byte (even: mapped alphabet, odd: UTF-8), pattern, 0xff, name.
GLOBS = {
    "prefix": (b"\x01", b"search_*", b"search_web"),
    "uri": (b"\x01", b"file:///public/*/q?.txt", b"file:///public/a/b/q1.txt"),
    "mapped": (b"\x00", bytes([2, 0, 2, 3, 1, 2]), bytes([0, 1, 4, 0, 1])),
    "hostile": (b"\x00", bytes([2, 0]) * 30 + bytes([1]), bytes([0]) * 150),
}
for name, (mode, pat, n) in GLOBS.items():
    write("authz_glob", name, mode + pat + b"\xff" + n)

# authz_filter: list selector, deny-pattern length, deny pattern, then the answer.
TOOLS = (b'{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},'
         b'{"name":"db_delete","inputSchema":{}},{"name":"add"}],"nextCursor":"c2"}}')
FILTERS = {
    "tools": b"\x00\x08*_delete" + TOOLS,
    "ts-order": b"\x00\x03add" + b'{"result":{"tools":[{"name":"add"},{"name":"echo"}]},"jsonrpc":"2.0","id":"c1"}',
    "prompts": b"\x01\x01s" + b'{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"s"},{"name":"t","arguments":[]}]}}',
    "resources": b"\x02\x0bfile:///x/*" + b'{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///x/a","name":"a"},{"uri":"file:///y"}]}}',
    "templates": b"\x03\x01*" + b'{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"file:///{p}"}]}}',
    "batch": b"\x00\x01a" + b'[{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}},{"jsonrpc":"2.0","id":2,"result":{}}]',
    "repeated": b"\x00\x01a" + b'{"result":{"tools":[{"name":"a"}],"tools":[{"name":"a","name":"b"}]},"result":{"tools":[]}}',
    "error": b"\x00\x01a" + b'{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}',
}
for name, b in FILTERS.items():
    write("authz_filter", name, b)
# auth: selector (bit 1 Authorization, bit 0 X-API-Key), Authorization, 0, X-API-Key, 0, token, 0, JWKS.
JWT = (b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ."
       b"eyJpc3MiOiJodHRwczovL2lkcC50ZXN0Iiwic3ViIjoiYWxpY2UiLCJzY29wZSI6Im1jcCBhZG1pbiJ9.c2ln")
JWKS = (b'{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",'
        b'"kid":"e","alg":"EdDSA"},{"kty":"oct","k":"c2VjcmV0"}]}')
write("auth", "bearer-jwt", b"\x02Bearer " + JWT + b"\x00\x00" + JWT + b"\x00" + JWKS)
write("auth", "api-key", b"\x01\x00fuzz-key-0123\x00" + JWT + b"\x00" + JWKS)
write("auth", "bearer-key", b"\x02Bearer fuzz-key-0123\x00\x00\x00")
write("auth", "both", b"\x03Bearer a.b.c\x00k\x00a.b.c\x00{}")
# federation: mode byte (0 cursor, 1 URI mark, 2 id, 3 message rewrites, 4 name table, 5 list
# merge), then the data.
FED = {
    "cursor-text": b"\x00AQ",
    "cursor-raw": b"\x00" + bytes([0, 2, 3]) + b"a-2" + bytes([1]),
    "mark-file": b"\x01file:///a\xffmy_fs",
    "mark-shared": b"\x01fed://shared/readme\xffbeta",
    "mark-looks-marked": b"\x01x+fed.b:y\xffa",
    "mark-template": b"\x01{scheme}://h/{p}\xffz",
    "id-string": b"\x02\x03req-\"7\"",
    "id-number": b"\x02\x81123456789012345678901234",
    "id-tagged": b"\x02\x00" + b'"fed.3.\\"abc\\""',
    "call": b"\x03" + b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__echo","arguments":{},"_meta":{"progressToken":1}}}',
    "read": b"\x03" + b'{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"uri":"file+fed.a:///x"}}',
    "complete": b"\x03" + b'{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"b__greet"},"argument":{"name":"w","value":""}}}',
    "list-cursor": b"\x03" + b'{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"AQ","_meta":{}}}',
    "listen": b"\x03" + b'{"jsonrpc":"2.0","id":4,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["a:/1"]}}}',
    "server-request": b"\x03" + b'{"jsonrpc":"2.0","id":9,"method":"elicitation/create","params":{"message":"m"}}',
    "client-answer": b"\x03" + b'{"jsonrpc":"2.0","id":"fed.1.9","result":{"action":"accept"}}',
    "cancelled": b"\x03" + b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"fed.0.9"}}',
    "table": b"\x04" + bytes(range(0, 250, 7)),
    "table-dense": b"\x04\x00\x01\x02\x20" + bytes([1, 0, 2, 8, 8]) * 12,
    "lists": b"\x05" + b'{"tools":[{"name":"echo"},{"name":"x"}],"nextCursor":"n","resultType":"complete","ttlMs":5,"cacheScope":"public"}'
             + b"\xff" + b'{"tools":[{"name":"echo","inputSchema":{}}],"resources":[{"uri":"fed://s/r","name":"r"}],"resourceTemplates":[{"uriTemplate":"fed://s/{id}"}]}',
}
for name, b in FED.items():
    write("federation", name, b)
