#!/usr/bin/env node
// peer_server.mjs: an MCP server built on the official TypeScript SDK, used as an upstream
// (or a direct peer) in shardcat's interop tests. It offers the same tool contract as the
// repository's other test servers, so one client can drive them all.
//
//   peer_server.mjs --transport http [--port N]   Streamable HTTP on 127.0.0.1:N/mcp (N=0: any
//                                                 free port); prints `LISTENING <port>` once bound
//   peer_server.mjs --transport stdio             newline-delimited JSON-RPC on stdin/stdout
//
// stdout carries only the LISTENING line (http) or the protocol (stdio); logs go to stderr.
// The harness copies this file next to target/interop/node/node_modules and runs it there,
// because ESM resolves packages relative to the script.
//
// Tools:
//   echo {text}                  -> text
//   progress {count,interval_ms} -> `count` notifications/progress (1..count, total=count) to the
//                                   request's progressToken, interval_ms apart, then "done"
//   sample {prompt}              -> sampling/createMessage to the client; returns the sampled text
//   elicit {message}             -> elicitation/create (one string field `name`);
//                                   "accepted:<name>" or "declined"
//   notify {text}                -> notifications/message (info, data=text) tied to no request,
//                                   so it travels on the session's standalone GET stream; "notified"
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import {
    CreateMessageResultSchema,
    ElicitResultSchema,
    isInitializeRequest
} from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const log = (...a) => console.error('peer_server:', ...a);
const text = (t) => ({ content: [{ type: 'text', text: t }] });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Upper bounds keep a bad argument from tying up the server for ever.
const MAX_COUNT = 10_000;
const MAX_INTERVAL_MS = 60_000;

function parseArgs(argv) {
    const opts = { transport: undefined, port: 0 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--transport') opts.transport = argv[++i];
        else if (a === '--port') opts.port = Number(argv[++i]);
        else throw new Error(`unknown argument ${a}`);
    }
    if (opts.transport !== 'http' && opts.transport !== 'stdio') {
        throw new Error('usage: peer_server.mjs --transport http|stdio [--port N]');
    }
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
        throw new Error(`bad --port ${opts.port}`);
    }
    return opts;
}

// Text of a sampling result: `content` is one block, or (2025-11-25) possibly an array.
function sampledText(result) {
    const blocks = Array.isArray(result.content) ? result.content : [result.content];
    return blocks.filter((b) => b?.type === 'text').map((b) => b.text).join('');
}

// One McpServer per session: the SDK binds a server to exactly one transport.
function buildServer() {
    const mcp = new McpServer(
        { name: 'shardcat-peer-server-ts', version: '1.0.0' },
        { capabilities: { tools: {}, logging: {} } }
    );

    mcp.registerTool('echo', { description: 'Returns text', inputSchema: { text: z.string() } },
        async ({ text: t }) => text(t));

    mcp.registerTool('progress', {
        description: 'Sends count progress notifications interval_ms apart, then returns "done"',
        inputSchema: {
            count: z.number().int().min(0).max(MAX_COUNT),
            interval_ms: z.number().int().min(0).max(MAX_INTERVAL_MS)
        }
    }, async ({ count, interval_ms }, extra) => {
        const token = extra._meta?.progressToken;
        for (let step = 1; step <= count; step++) {
            if (step > 1 && interval_ms > 0) await sleep(interval_ms);
            if (extra.signal.aborted) throw new Error('cancelled');
            // No token: the client asked for no progress, so send none (same as the Rust fixture).
            if (token === undefined) continue;
            // extra.sendNotification ties the notification to this request, so over HTTP it
            // rides this request's SSE response stream.
            await extra.sendNotification({
                method: 'notifications/progress',
                params: { progressToken: token, progress: step, total: count, message: `step ${step} of ${count}` }
            });
        }
        return text('done');
    });

    mcp.registerTool('sample', {
        description: 'Asks the client to sample a message; returns the sampled text',
        inputSchema: { prompt: z.string() }
    }, async ({ prompt }, extra) => {
        // extra.sendRequest (not mcp.server.createMessage) relates the request to this tool
        // call, so it goes out on the call's SSE stream rather than the standalone GET stream.
        const result = await extra.sendRequest({
            method: 'sampling/createMessage',
            params: { messages: [{ role: 'user', content: { type: 'text', text: prompt } }], maxTokens: 64 }
        }, CreateMessageResultSchema, { timeout: 30_000 });
        return text(sampledText(result));
    });

    mcp.registerTool('elicit', {
        description: 'Asks the client for a name; returns "accepted:<name>" or "declined"',
        inputSchema: { message: z.string() }
    }, async ({ message }, extra) => {
        const result = await extra.sendRequest({
            method: 'elicitation/create',
            params: {
                message,
                requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] }
            }
        }, ElicitResultSchema, { timeout: 30_000 });
        return text(result.action === 'accept' ? `accepted:${result.content?.name}` : 'declined');
    });

    mcp.registerTool('notify', {
        description: 'Sends a notifications/message tied to no request (the GET stream), then returns "notified"',
        inputSchema: { text: z.string() }
    }, async ({ text: t }) => {
        // Sent through the Server without relatedRequestId: the HTTP transport routes it to the
        // standalone GET SSE stream (and drops it if none is open; the client retries for that).
        await mcp.server.notification({ method: 'notifications/message', params: { level: 'info', data: t } });
        return text('notified');
    });

    return mcp;
}

async function readBody(req, limit = 4 * 1024 * 1024) {
    const chunks = [];
    let size = 0;
    for await (const c of req) {
        size += c.length;
        if (size > limit) throw new Error('request body too large');
        chunks.push(c);
    }
    return Buffer.concat(chunks).toString('utf8');
}

function jsonError(res, status, code, message) {
    if (res.headersSent) return res.end();
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

async function runHttp(port) {
    const sessions = new Map(); // session id -> StreamableHTTPServerTransport

    async function handle(req, res) {
        const url = new URL(req.url ?? '/', 'http://127.0.0.1');
        if (url.pathname !== '/mcp') return jsonError(res, 404, -32000, 'not found: use /mcp');
        const sid = req.headers['mcp-session-id'];
        if (req.method === 'POST') {
            let body;
            try {
                body = JSON.parse(await readBody(req));
            } catch (e) {
                return jsonError(res, 400, -32700, `Parse error: ${e.message}`);
            }
            if (sid !== undefined) {
                const t = sessions.get(sid);
                if (!t) return jsonError(res, 404, -32001, 'Session not found');
                return t.handleRequest(req, res, body);
            }
            if (!isInitializeRequest(body)) {
                return jsonError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
            }
            // A new session: its own transport and server, registered once the SDK has minted
            // the id, removed when the transport closes (DELETE, or shutdown).
            const transport = new StreamableHTTPServerTransport({
                sessionIdGenerator: () => randomUUID(),
                onsessioninitialized: (id) => { sessions.set(id, transport); }
            });
            transport.onclose = () => {
                if (transport.sessionId) sessions.delete(transport.sessionId);
            };
            await buildServer().connect(transport);
            return transport.handleRequest(req, res, body);
        }
        if (req.method === 'GET' || req.method === 'DELETE') {
            if (sid === undefined) return jsonError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
            const t = sessions.get(sid);
            if (!t) return jsonError(res, 404, -32001, 'Session not found');
            // DELETE: the SDK answers 200 and closes the transport, whose onclose drops the entry.
            return t.handleRequest(req, res);
        }
        res.writeHead(405, { allow: 'GET, POST, DELETE' }).end();
    }

    const server = http.createServer((req, res) => {
        handle(req, res).catch((e) => {
            log('request failed:', e);
            jsonError(res, 500, -32603, `Internal error: ${e.message}`);
        });
    });
    const shutdown = async () => {
        for (const t of sessions.values()) await t.close().catch(() => {});
        server.close();
        server.closeAllConnections?.();
        process.exit(0);
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
    server.listen(port, '127.0.0.1', () => {
        // The one stdout line: the harness reads the port from it.
        process.stdout.write(`LISTENING ${server.address().port}\n`);
    });
}

async function runStdio() {
    const mcp = buildServer();
    await mcp.connect(new StdioServerTransport());
    // The client going away closes stdin: leave then, even with a tool call still sleeping.
    process.stdin.on('end', () => process.exit(0));
    process.on('SIGTERM', () => process.exit(0));
    log('serving on stdio');
}

try {
    const opts = parseArgs(process.argv.slice(2));
    await (opts.transport === 'http' ? runHttp(opts.port) : runStdio());
} catch (e) {
    log(e.message);
    process.exit(2);
}
