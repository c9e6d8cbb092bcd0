#!/usr/bin/env node
// cluster_client.mjs: N concurrent sessions of the official TypeScript SDK client
// (@modelcontextprotocol/sdk, `Client` over `StreamableHTTPClientTransport`) calling `echo` at a
// steady pace through a shardcat cluster while a node may be killed under them: the TypeScript
// counterpart of tests/interop/py/cluster_client.py, run by tests/cluster.rs.
//
//   cluster_client.mjs --url URL [--sessions N] [--interval-ms 100] [--duration-s 8]
//                      [--label NAME] [--connect-timeout-s 20] [--call-timeout-s 5]
//                      [--bucket-ms 500] [--stop-file PATH]
//
// Each session connects (initialize; after notifications/initialized is accepted the transport
// opens the standalone GET stream itself and, when it breaks, reconnects it with Last-Event-ID:
// the SDK's default reconnectionOptions, 1 s then x1.5 up to 30 s, 2 attempts, or the server's
// `retry:`). Once every session is connected (or --connect-timeout-s passed), each one calls
// `echo` every --interval-ms until --duration-s is over (or, sooner, --stop-file exists), each call bounded by --call-timeout-s,
// and counts the `notifications/message` of the GET stream (the demo upstream's
// `params.data.seq`). Then DELETE (transport.terminateSession()) and close.
//
// stdout: exactly one JSON line at the end, the shape cluster_client.py prints (sdk
// "typescript", and "transport_errors": [[t_ms, message], ...], the first 10 the Client's
// onerror saw); see there. Diagnostics go to stderr. Every wait is bounded.
import { existsSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const CLOSE_GRACE_MS = 10_000;
const MAX_LISTED = 20;

const log = (...a) => console.error('cluster_client.mjs:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Date.now();

function parseArgs(argv) {
    const o = {
        url: undefined, sessions: 1, intervalMs: 100, durationS: 8, label: '', connectTimeoutS: 20,
        callTimeoutS: 5, bucketMs: 500, stopFile: undefined
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--url') o.url = argv[++i];
        else if (a === '--sessions') o.sessions = Number(argv[++i]);
        else if (a === '--interval-ms') o.intervalMs = Number(argv[++i]);
        else if (a === '--duration-s') o.durationS = Number(argv[++i]);
        else if (a === '--label') o.label = argv[++i];
        else if (a === '--connect-timeout-s') o.connectTimeoutS = Number(argv[++i]);
        else if (a === '--call-timeout-s') o.callTimeoutS = Number(argv[++i]);
        else if (a === '--bucket-ms') o.bucketMs = Number(argv[++i]);
        else if (a === '--stop-file') o.stopFile = argv[++i];
        else throw new Error(`unknown argument ${a}`);
    }
    if (!o.url) throw new Error('--url URL is required');
    if (!Number.isInteger(o.sessions) || o.sessions < 1) throw new Error('--sessions N (N >= 1)');
    return o;
}

function describe(e) {
    const c = e?.cause;
    return (`${e?.name ?? 'Error'}: ${e?.message ?? e}` + (c ? ` (cause: ${c.code ?? c.message ?? c})` : '')).slice(0, 300);
}

/** A promise bounded by `ms`: rejects with a timeout error past it. */
function bounded(p, ms, what) {
    let timer;
    const t = new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`${what}: no answer within ${ms} ms`)), ms); });
    return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

function newSession(index) {
    return {
        index, error: null, sidStart: undefined, sidsSent: [], initializes: 0, deleteStatus: undefined,
        ok: 0, failed: 0, failures: [], firstOk: undefined, lastOk: undefined, okStarts: [], failedStarts: [],
        gets: [], seqs: [], transportErrors: [], closing: false, connected: false
    };
}

function open(opts, s) {
    const client = new Client({ name: `shardcat-cluster-client-ts-${s.index}`, version: '1.0.0' }, { capabilities: {} });
    client.onerror = (e) => {
        if (s.closing) return;
        const msg = String(e?.message ?? e).slice(0, 200);
        if (s.transportErrors.length < 10) s.transportErrors.push([now(), msg]);
    };
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
        const q = n.params?.data?.seq;
        if (Number.isInteger(q)) s.seqs.push([q, now()]);
    });
    const recording = async (url, init) => {
        const method = init?.method ?? 'GET';
        const h = new Headers(init?.headers);
        const sid = h.get('mcp-session-id');
        if (sid && !s.sidsSent.includes(sid)) s.sidsSent.push(sid);
        if (method === 'POST') {
            try {
                const body = JSON.parse(String(init.body));
                if (!Array.isArray(body) && body.method === 'initialize') s.initializes += 1;
            } catch { /* not JSON: not ours to judge */ }
        }
        let g;
        if (method === 'GET' && s.gets.length < 10) {
            g = [now(), h.get('last-event-id'), 'sent'];
            s.gets.push(g);
        }
        let response;
        try {
            response = await fetch(url, init);
        } catch (e) {
            if (g) g[2] = 'error';
            throw e;
        }
        if (g) g[2] = response.status;
        if (method === 'DELETE') s.deleteStatus = response.status;
        s.sidStart ??= response.headers.get('mcp-session-id') ?? undefined;
        return response;
    };
    const transport = new StreamableHTTPClientTransport(new URL(opts.url), { fetch: recording });
    return { client, transport };
}

async function calls(client, s, opts, t0) {
    const deadline = t0 + opts.durationS * 1000;
    let k = 0;
    while (now() < deadline && !(opts.stopFile && existsSync(opts.stopFile))) {
        const begun = now();
        k += 1;
        const text = `ts${s.index}-${k}`;
        let error = null;
        try {
            const r = await client.callTool({ name: 'echo', arguments: { text } }, undefined, { timeout: opts.callTimeoutS * 1000 });
            const got = (r.content ?? []).map((b) => b.text ?? '').join('');
            if (r.isError || got !== text) error = `echo answered ${JSON.stringify(got)} (isError ${r.isError})`;
        } catch (e) {
            error = describe(e);
        }
        const ended = now();
        if (error === null) {
            s.ok += 1;
            s.okStarts.push(begun);
            s.firstOk ??= ended;
            s.lastOk = ended;
        } else {
            s.failed += 1;
            s.failedStarts.push(begun);
            if (s.failures.length < MAX_LISTED) s.failures.push([begun, ended, error]);
        }
        await sleep(Math.max(0, begun + opts.intervalMs - now()));
    }
}

function seqSummary(seqs) {
    const values = seqs.map(([q]) => q);
    const unique = [...new Set(values)].sort((a, b) => a - b);
    const gaps = [];
    for (let i = 1; i < unique.length; i++) if (unique[i] > unique[i - 1] + 1) gaps.push([unique[i - 1] + 1, unique[i] - 1]);
    let silence = 0;
    let at = null;
    for (let i = 1; i < seqs.length; i++) {
        const d = seqs[i][1] - seqs[i - 1][1];
        if (d > silence) { silence = d; at = seqs[i - 1][1]; }
    }
    return {
        count: values.length, first: unique[0] ?? null, last: unique.at(-1) ?? null, unique: unique.length,
        duplicates: values.length - unique.length, contiguous: gaps.length === 0, gaps: gaps.slice(0, 10),
        max_silence_ms: silence, max_silence_at_ms: at, last_at_ms: seqs.at(-1)?.[1] ?? null
    };
}

function buckets(starts, t0, width, n) {
    const out = new Array(n).fill(0);
    for (const s of starts) out[Math.min(n - 1, Math.max(0, Math.floor((s - t0) / width)))] += 1;
    return out;
}

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        log(e.message);
        process.exit(2);
    }
    const sessions = Array.from({ length: opts.sessions }, (_, i) => newSession(i));
    const opened = sessions.map((s) => open(opts, s));
    const connectMs = opts.connectTimeoutS * 1000;
    await Promise.all(sessions.map(async (s, i) => {
        try {
            await bounded(opened[i].client.connect(opened[i].transport, { timeout: connectMs }), connectMs, 'connect');
            s.connected = true;
        } catch (e) {
            s.error = `connect: ${describe(e)}`;
        }
    }));
    const t0 = now();
    const connected = sessions.filter((s) => s.connected).length;
    log(`${connected} of ${opts.sessions} sessions connected; calling for ${opts.durationS} s`);
    await Promise.all(sessions.filter((s) => s.connected).map((s) => calls(opened[s.index].client, s, opts, t0)));
    await Promise.all(sessions.map(async (s, i) => {
        const { client, transport } = opened[i];
        try {
            if (transport.sessionId !== undefined) await bounded(transport.terminateSession(), CLOSE_GRACE_MS, 'DELETE');
        } catch (e) {
            s.error ??= `DELETE: ${describe(e)}`;
        }
        s.closing = true;
        try {
            await bounded(client.close(), CLOSE_GRACE_MS, 'close');
        } catch (e) {
            s.error ??= `close: ${describe(e)}`;
        }
    }));
    const n = Math.floor((opts.durationS * 1000 + opts.callTimeoutS * 1000) / opts.bucketMs) + 1;
    const report = {
        label: opts.label,
        sdk: 'typescript',
        sessions: opts.sessions,
        connected,
        t0_ms: t0,
        bucket_ms: opts.bucketMs,
        per_session: sessions.map((s) => ({
            index: s.index,
            error: s.error,
            sid_start: s.sidStart ?? null,
            sid_end: s.sidsSent.at(-1) ?? null,
            sids_sent: s.sidsSent.length,
            initializes: s.initializes,
            delete_status: s.deleteStatus ?? null,
            ok: s.ok,
            failed: s.failed,
            failures: s.failures,
            first_ok_ms: s.firstOk ?? null,
            last_ok_ms: s.lastOk ?? null,
            ok_buckets: buckets(s.okStarts, t0, opts.bucketMs, n),
            failed_buckets: buckets(s.failedStarts, t0, opts.bucketMs, n),
            gets: s.gets,
            transport_errors: s.transportErrors,
            seq: seqSummary(s.seqs)
        }))
    };
    process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(0));
}

await main();
