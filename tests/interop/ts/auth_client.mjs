#!/usr/bin/env node
// auth_client.mjs: the official TypeScript SDK client against a gateway that requires a
// bearer token, for shardcat's auth tests: `Authorization: Bearer TOKEN` goes on every request
// through the transport's requestInit headers; connect, list tools, call echo, close.
//
//   auth_client.mjs --url URL --token TOKEN
//
// stdout: one JSON line {"ok", "tools", "echo", "error"}; exit 0 iff ok.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const arg = (name) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
};

async function main() {
    const url = arg('--url');
    const token = arg('--token');
    const transport = new StreamableHTTPClientTransport(new URL(url), {
        requestInit: { headers: { Authorization: `Bearer ${token}` } },
        reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 1 }
    });
    const client = new Client({ name: 'shardcat-ts-auth-client', version: '1.0.0' });
    await client.connect(transport);
    const tools = await client.listTools();
    const res = await client.callTool({ name: 'echo', arguments: { text: 'hello-auth' } });
    const echo = (res.content || []).map((c) => c.text || '').join('');
    await transport.terminateSession();
    await client.close();
    return { ok: true, tools: tools.tools.map((t) => t.name), echo };
}

const timer = setTimeout(() => {
    console.log(JSON.stringify({ ok: false, error: 'timed out' }));
    process.exit(1);
}, 60000);
main()
    .then((out) => {
        clearTimeout(timer);
        console.log(JSON.stringify(out));
        process.exit(0);
    })
    .catch((e) => {
        clearTimeout(timer);
        console.log(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e).slice(0, 800) }));
        process.exit(1);
    });
