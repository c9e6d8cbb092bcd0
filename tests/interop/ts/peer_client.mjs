#!/usr/bin/env node
// peer_client.mjs: an MCP client built on the official TypeScript SDK, used by shardcat's
// interop tests to drive a server (shardcat itself, or a peer directly) with N concurrent
// sessions from one process.
//
//   peer_client.mjs (--url URL | --stdio CMD [ARGS...]) --sessions N [--label NAME] [--timeout-s 60]
//
// --stdio takes the words after it up to the next flag of this client (--url, --sessions,
// --label, --timeout-s); a single word with spaces is split on whitespace ("CMD ARGS").
// Each session spawns its own stdio server then.
//
// Each session, in order: connect (with sampling and elicitation) -> tools/list -> echo ->
// progress -> sample (if listed) -> a notifications/message on the standalone GET stream ->
// DELETE + close. stdout gets exactly one JSON line, at the end:
//   {"label","sessions","passed","failed":[{session,step,error}],"skipped_steps":{step:reason},
//    "versions":[negotiated protocol versions]}
// Exit code 0 iff every session passed. Diagnostics go to stderr. Every wait is bounded by the
// overall --timeout-s deadline; a session still running then fails naming its current step.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
    CreateMessageRequestSchema,
    ElicitRequestSchema,
    LoggingMessageNotificationSchema
} from '@modelcontextprotocol/sdk/types.js';

const log = (...a) => console.error('peer_client:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const OWN_FLAGS = new Set(['--url', '--stdio', '--sessions', '--label', '--timeout-s']);

function parseArgs(argv) {
    const o = { url: undefined, stdio: undefined, sessions: undefined, label: 'ts-client', timeoutS: 60 };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--url') o.url = argv[++i];
        else if (a === '--sessions') o.sessions = Number(argv[++i]);
        else if (a === '--label') o.label = argv[++i];
        else if (a === '--timeout-s') o.timeoutS = Number(argv[++i]);
        else if (a === '--stdio') {
            o.stdio = [];
            while (i + 1 < argv.length && !OWN_FLAGS.has(argv[i + 1])) o.stdio.push(argv[++i]);
            if (o.stdio.length === 1) o.stdio = o.stdio[0].split(/\s+/).filter(Boolean);
        } else throw new Error(`unknown argument ${a}`);
    }
    if ((o.url === undefined) === (o.stdio === undefined) || (o.stdio && o.stdio.length === 0)) {
        throw new Error('give exactly one of --url URL or --stdio CMD [ARGS...]');
    }
    if (!Number.isInteger(o.sessions) || o.sessions < 1) throw new Error('--sessions N (N >= 1) is required');
    if (!(o.timeoutS > 0)) throw new Error('--timeout-s must be > 0');
    return o;
}

// Error text with its cause: undici says only "fetch failed" and hides ECONNREFUSED etc. there.
const describe = (e) => {
    const c = e?.cause;
    return String(e?.message ?? e) + (c ? ` (cause: ${c.code ?? c.message ?? c})` : '');
};
const textOf = (result) => (result.content ?? []).filter((b) => b.type === 'text').map((b) => b.text).join('');

// One session's run. `state.step` always names the step in progress, so a failure or the
// overall timeout can say where the session stood. Resolves on success, throws otherwise.
async function runSession(i, opts, deadline, state, report) {
    const remaining = () => Math.max(1, deadline - Date.now());
    // Every SDK request gets the time left as its own timeout (the SDK default would be 60 s).
    const reqOpts = () => ({ timeout: remaining() });

    state.step = 'connect';
    const client = new Client(
        { name: `shardcat-peer-client-ts-${i}`, version: '1.0.0' },
        { capabilities: { sampling: {}, elicitation: {} } }
    );
    state.client = client;
    client.onerror = (e) => {
        const msg = String(e?.message ?? e);
        // client.close() aborts a GET stream the server has not ended yet: expected, not news.
        if (state.step === 'close' && msg.includes('AbortError')) return;
        log(`session ${i}: transport error during ${state.step}: ${msg}`);
    };
    client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
        const c = req.params.messages[0]?.content;
        const prompt = (Array.isArray(c) ? c : [c]).filter((b) => b?.type === 'text').map((b) => b.text).join('');
        return { role: 'assistant', model: 'peer-client', stopReason: 'endTurn', content: { type: 'text', text: `sampled:${prompt}` } };
    });
    client.setRequestHandler(ElicitRequestSchema, async () => ({ action: 'accept', content: { name: 'peer' } }));

    // notifications/message: kept in arrival order; waiters are woken on each arrival.
    const messages = [];
    const waiters = new Set();
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
        messages.push(n.params);
        for (const w of waiters) w();
    });
    const waitMessage = (pred, ms) => new Promise((resolve) => {
        if (messages.some(pred)) return resolve(true);
        const done = (ok) => { clearTimeout(timer); waiters.delete(check); resolve(ok); };
        const check = () => { if (messages.some(pred)) done(true); };
        const timer = setTimeout(() => done(false), Math.min(ms, remaining()));
        waiters.add(check);
    });

    let transport;
    if (opts.url) {
        // Few, quick GET-stream reconnects: a gateway that drops the stream should show up as
        // a failure here, not be papered over by a long retry loop.
        transport = new StreamableHTTPClientTransport(new URL(opts.url), {
            reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 2 }
        });
    } else {
        transport = new StdioClientTransport({ command: opts.stdio[0], args: opts.stdio.slice(1), stderr: 'inherit' });
    }
    state.transport = transport;
    // The Client reports the negotiated version through setProtocolVersion (HTTP transports
    // need it for their headers); hook it to record the version for stdio as well.
    const origSet = transport.setProtocolVersion?.bind(transport);
    transport.setProtocolVersion = (v) => { state.version = v; origSet?.(v); };
    await client.connect(transport, reqOpts());
    // Progress is counted on the wire, in arrival order, ahead of the SDK: the SDK 1.32 client
    // dispatches notifications a microtask late but responses at once, so a progress
    // notification that arrives in the same read as its response reaches onprogress after the
    // handler is gone ("unknown token", typescript-sdk issue #2580) although the server sent it
    // first. `wire.atResult` snapshots what had arrived when the call's response came in.
    const wire = { progress: [], atResult: undefined };
    const inner = transport.onmessage;
    transport.onmessage = (msg, extra) => {
        if (state.step === 'progress') {
            if (msg.method === 'notifications/progress') wire.progress.push(msg.params?.progress);
            else if ('id' in msg && ('result' in msg || 'error' in msg)) wire.atResult ??= [...wire.progress];
        }
        inner?.(msg, extra);
    };

    state.step = 'tools/list';
    const { tools } = await client.listTools(undefined, reqOpts());
    const names = new Set(tools.map((t) => t.name));
    for (const need of ['echo', 'progress']) {
        if (!names.has(need)) throw new Error(`tools/list lacks ${need} (got ${[...names].join(',')})`);
    }

    state.step = 'echo';
    const echoed = textOf(await client.callTool({ name: 'echo', arguments: { text: `hello-${i}` } }, undefined, reqOpts()));
    if (echoed !== `hello-${i}`) throw new Error(`echo returned ${JSON.stringify(echoed)}`);

    state.step = 'progress';
    const seen = [];
    const pres = await client.callTool({ name: 'progress', arguments: { count: 3, interval_ms: 20 } }, undefined,
        { ...reqOpts(), onprogress: (p) => seen.push(p.progress) });
    const ptext = textOf(pres);
    // "done" is the test servers' contract; shardcat's built-in demo (src/demo.rs) words its
    // result "sent N progress notifications". Either is the upstream's own text, so accept both.
    if (ptext !== 'done' && ptext !== 'sent 3 progress notifications') {
        throw new Error(`progress returned ${JSON.stringify(ptext)}`);
    }
    if (wire.atResult?.join(',') !== '1,2,3') {
        throw new Error(`expected progress 1,2,3 before the result, got [${wire.atResult?.join(',')}] ` +
            `(all on the wire: [${wire.progress.join(',')}], via onprogress: [${seen.join(',')}])`);
    }

    // A handshake-era HTTP server that issued no session id (stateless mode) has no channel
    // for the client's answer to a server request and no GET stream: those steps do not apply.
    const sessionless = opts.url && transport.sessionId === undefined;
    const why = 'handshake-era HTTP server without Mcp-Session-Id: no back-channel and no GET stream';

    state.step = 'sample';
    if (sessionless) {
        report.skipped.sample = why;
    } else if (names.has('sample')) {
        const stext = textOf(await client.callTool({ name: 'sample', arguments: { prompt: `p${i}` } }, undefined, reqOpts()));
        if (!stext.includes(`sampled:p${i}`)) throw new Error(`sample returned ${JSON.stringify(stext)}`);
    } else {
        report.skipped.sample = 'server lists no sample tool';
    }

    state.step = 'notification';
    if (sessionless) {
        report.skipped.notification = why;
    } else if (names.has('notify')) {
        // The client opens its GET stream only after `initialized`, asynchronously, and a server
        // drops a standalone notification while no GET stream is attached: so ask again, 300 ms
        // apart, until one arrives.
        const want = `n${i}`;
        let got = false;
        for (let k = 0; k < 10 && !got; k++) {
            const r = textOf(await client.callTool({ name: 'notify', arguments: { text: want } }, undefined, reqOpts()));
            if (r !== 'notified') throw new Error(`notify returned ${JSON.stringify(r)}`);
            got = await waitMessage((m) => m.data === want, 300);
        }
        if (!got) throw new Error(`no notifications/message with data ${JSON.stringify(want)} after 10 notify calls`);
    } else {
        // No notify tool (shardcat's demo server pushes one per second on the GET stream).
        const got = await waitMessage(() => true, 5000);
        if (!got) throw new Error('no notifications/message within 5 s (server lists no notify tool)');
    }

    state.step = 'close';
    if (opts.url && !sessionless) await transport.terminateSession();
    else if (sessionless) report.skipped.terminateSession = 'the server issued no session to DELETE';
    else report.skipped.terminateSession = 'stdio transport: no HTTP session to DELETE';
    await client.close();
    state.client = undefined;
}

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        log(e.message);
        process.exit(2);
    }
    const deadline = Date.now() + opts.timeoutS * 1000;
    const report = { skipped: {} };
    const states = [];
    let timer;
    const overall = new Promise((r) => { timer = setTimeout(r, opts.timeoutS * 1000); });

    const outcomes = await Promise.all(Array.from({ length: opts.sessions }, (_, i) => {
        const state = { step: 'start', version: undefined, client: undefined, transport: undefined };
        states.push(state);
        const run = runSession(i, opts, deadline, state, report)
            .then(() => null, (e) => ({ session: i, step: state.step, error: describe(e) }));
        const timedOut = overall.then(() => ({ session: i, step: state.step, error: `timed out after ${opts.timeoutS} s` }));
        return Promise.race([run, timedOut]);
    }));
    clearTimeout(timer);

    // Close what a failure or timeout left open, bounded to 3 s: DELETE the HTTP session so the
    // server (and a gateway's stdio child) does not outlive us, and kill stdio children.
    await Promise.race([
        Promise.allSettled(states.filter((s) => s.client).map(async (s) => {
            s.step = 'close'; // the outcome is already recorded; this only quiets abort noise
            if (opts.url && s.transport?.sessionId) await s.transport.terminateSession().catch(() => {});
            await s.client.close();
        })),
        sleep(3000)
    ]);

    const failed = outcomes.filter(Boolean);
    const versions = [...new Set(states.map((s) => s.version).filter(Boolean))].sort();
    const out = {
        label: opts.label,
        sessions: opts.sessions,
        passed: opts.sessions - failed.length,
        failed,
        skipped_steps: report.skipped,
        versions
    };
    const code = failed.length === 0 ? 0 : 1;
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

await main();
