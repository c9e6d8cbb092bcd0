#!/usr/bin/env node
// fed_client.mjs: N concurrent sessions of the official TypeScript SDK client
// (@modelcontextprotocol/sdk, `Client` over `StreamableHTTPClientTransport`) against one
// federated route of shardcat (several MCP servers behind one path): the TypeScript counterpart
// of tests/interop/py/fed_client.py, run by tests/federation.rs.
//
//   fed_client.mjs --url URL --sessions N [--label NAME] [--timeout-s 60]
//                  [--servers alpha,beta,gamma] [--separator __]
//                  [--require NAME,...] [--forbid NAME,...] [--close-early]
//
// --servers names the route's servers and --separator the gateway's prefix separator: a listed
// name `<server><separator><name>` is `name` offered by `server`; any other name is bare (its
// owner is one of --servers, unknown to us). The SDK always opens a session with the
// initialize handshake, so the report's "mode" is "legacy" in fed_client.py's terms.
//
// Each session, in order (the step names are the ones reported on failure):
//   connect    initialize, declaring sampling ("sampled:<prompt>") and elicitation (accept,
//              with every field of the requested schema filled in)
//   tools/list every page (following nextCursor); no name twice; every --require name listed,
//              no --forbid name listed
//   tools/call every listed tool whose base name (the prefix taken off) has a contract below;
//              the others are skipped and named in skipped_steps. whoami, only_X, secret_X and
//              added_X must answer their owner (the prefix's server, or X)
//   prompts    prompts/list (every page), then prompts/get of each greet, <server>_prompt and
//              test_simple_prompt listed
//   resources  resources/list (every page), then resources/read of each resource listed: it
//              must answer contents, and a fed:// resource's text must name the server whose
//              description it carries ("... served by X" / "readme of X")
//   close      DELETE (transport.terminateSession()), answered 200 (or 405), then close
//
// --close-early: sessions that end without DELETE instead. Each connects, lists the tools
// (checked as above) and calls one tool of server --servers[(i / 3) % n], then closes the
// transport (client.close(): every open request and the GET stream are aborted) and sends no
// DELETE. By i % 3: 0 calls `progress` (20 x 200 ms) and closes once the first progress
// notification is in (the upstream is mid-call); 1 calls `progress` and closes as soon as the
// POST is on its way (before any answer); 2 calls `echo`, checks the answer, then closes.
//
// stdout: exactly one JSON line at the end, the shape fed_client.py prints:
//   {"label", "mode", "sessions", "passed", "failed": [{"session", "step", "error"}],
//    "skipped_steps": {step: reason}, "versions": [...], "tools": [names session 0 listed],
//    "calls": tool calls that passed, over all sessions}
// Exit status 0 iff every session passed. Diagnostics go to stderr. Every wait is bounded by
// the --timeout-s deadline (closing gets CLOSE_GRACE_MS more).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CreateMessageRequestSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const CLOSE_GRACE_MS = 10_000; // closing (DELETE) gets this much past --timeout-s
const MAX_PAGES = 1000; // a gateway whose cursors loop must fail the step, not hang it
// Abandoned calls: long enough that the answer cannot come before the close.
const ABANDONED_PROGRESS = { count: 20, interval_ms: 200 };

const log = (...a) => console.error('fed_client:', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class StepFailed extends Error {}

// ---- arguments ----------------------------------------------------------------------------

function parseArgs(argv) {
    const names = (v) => (v ?? '').split(',').filter(Boolean);
    const o = {
        url: undefined, sessions: 1, label: '', timeoutS: 60, servers: [], separator: '__',
        require: [], forbid: [], closeEarly: false
    };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--url') o.url = argv[++i];
        else if (a === '--sessions') o.sessions = Number(argv[++i]);
        else if (a === '--label') o.label = argv[++i];
        else if (a === '--timeout-s') o.timeoutS = Number(argv[++i]);
        else if (a === '--servers') o.servers = names(argv[++i]);
        else if (a === '--separator') o.separator = argv[++i];
        else if (a === '--require') o.require = names(argv[++i]);
        else if (a === '--forbid') o.forbid = names(argv[++i]);
        else if (a === '--close-early') o.closeEarly = true;
        else throw new Error(`unknown argument ${a}`);
    }
    if (!o.url) throw new Error('--url URL is required');
    if (!Number.isInteger(o.sessions) || o.sessions < 1) throw new Error('--sessions N (N >= 1)');
    if (!(o.timeoutS > 0)) throw new Error('--timeout-s must be > 0');
    if (o.closeEarly && o.servers.length === 0) throw new Error('--close-early needs --servers');
    return o;
}

// ---- names --------------------------------------------------------------------------------

let SERVERS = [];
let SEPARATOR = '__';

/** [owner or null, base name] of a listed name. */
function split(name) {
    for (const s of SERVERS) {
        if (name.startsWith(s + SEPARATOR)) return [s, name.slice(s.length + SEPARATOR.length)];
    }
    return [null, name];
}

/** The listed name of `base` as offered by `server`: prefixed, or bare if only it has it. */
function nameOf(listed, server, base) {
    const prefixed = `${server}${SEPARATOR}${base}`;
    if (listed.includes(prefixed)) return prefixed;
    return listed.includes(base) ? base : undefined;
}

// ---- the client's side of server requests ---------------------------------------------------

function promptText(params) {
    const c = params.messages?.at(-1)?.content;
    return (Array.isArray(c) ? c : [c]).map((b) => b?.text ?? '').join('');
}

const onSampling = async (req) => ({
    role: 'assistant',
    model: 'fed-model',
    stopReason: 'endTurn',
    content: { type: 'text', text: `sampled:${promptText(req.params)}` }
});

/** A valid value for one property of an elicitation schema (fed_client.py's _fill). */
function fill(prop) {
    if ('default' in prop) return prop.default;
    if ('enum' in prop) return prop.enum[0];
    for (const key of ['oneOf', 'anyOf']) {
        if (prop[key]?.length && 'const' in prop[key][0]) return prop[key][0].const;
    }
    return { array: [], integer: 1, number: 1.0, boolean: true }[prop.type] ?? 'peer';
}

const onElicitation = async (req) => {
    const props = req.params.requestedSchema?.properties ?? {};
    return { action: 'accept', content: Object.fromEntries(Object.entries(props).map(([k, v]) => [k, fill(v)])) };
};

// ---- tool contracts ---------------------------------------------------------------------------

const texts = (r) => (r.content ?? []).map((b) => b.text ?? '').join('');

function okText(r) {
    if (r.isError) throw new StepFailed(`tool returned isError: ${JSON.stringify(texts(r))}`);
    return texts(r);
}

const equals = (want) => (r, owner, i) => {
    const [got, expect] = [okText(r), want(owner, i)];
    return got === expect ? null : `returned ${JSON.stringify(got)}, not ${JSON.stringify(expect)}`;
};
const contains = (want) => (r, owner, i) => {
    const got = okText(r);
    return got.includes(want(i)) ? null : `returned ${JSON.stringify(got)}, which lacks ${JSON.stringify(want(i))}`;
};
const contentType = (kind) => (r) => {
    okText(r);
    const got = r.content?.[0]?.type ?? '';
    return got === kind ? null : `first content block is ${JSON.stringify(got)}, not ${JSON.stringify(kind)}`;
};
const isError = (r) => (r.isError ? null : `should fail (isError) but returned ${JSON.stringify(texts(r))}`);
const ownerName = (r, owner) => {
    const got = okText(r);
    if (owner !== null) return got === owner ? null : `answered ${JSON.stringify(got)}, but the prefix names ${JSON.stringify(owner)}`;
    return SERVERS.length === 0 || SERVERS.includes(got) ? null : `answered ${JSON.stringify(got)}, none of ${SERVERS}`;
};
const none = () => ({});

// base name -> [arguments for session i, check(result, owner, i) -> error or null]
const CONTRACTS = {
    echo: [(i) => ({ text: `e${i}` }), equals((o, i) => `e${i}`)],
    whoami: [none, ownerName],
    add: [(i) => ({ a: 2, b: i }), equals((o, i) => String(2 + i))],
    sleep: [() => ({ ms: 1 }), equals(() => 'slept')],
    progress: [() => ({ count: 2, interval_ms: 1 }), equals(() => 'done')],
    log: [(i) => ({ text: `l${i}` }), equals(() => 'logged')],
    notify: [(i) => ({ text: `n${i}` }), equals(() => 'notified')],
    stderr: [() => ({ lines: 1 }), equals(() => 'wrote 1 lines')],
    pid: [none, (r) => (/^\d+$/.test(okText(r)) ? null : `returned ${JSON.stringify(texts(r))}`)],
    sample: [(i) => ({ prompt: `p${i}` }), contains((i) => `sampled:p${i}`)],
    elicit: [(i) => ({ message: `m${i}` }), equals(() => 'accepted:peer')],
    test_simple_text: [none, equals(() => 'This is a simple text response for testing.')],
    test_image_content: [none, contentType('image')],
    test_audio_content: [none, contentType('audio')],
    test_embedded_resource: [none, contentType('resource')],
    test_multiple_content_types: [none, contentType('text')],
    test_tool_with_logging: [none, equals(() => 'Tool with logging executed successfully')],
    test_error_handling: [none, isError],
    test_tool_with_progress: [none, equals(() => 'Tool with progress executed successfully')],
    test_sampling: [(i) => ({ prompt: `q${i}` }), contains((i) => `LLM response: sampled:q${i}`)],
    test_elicitation: [() => ({ message: 'who?' }), contains(() => 'action: accept')],
    test_elicitation_sep1034_defaults: [none, contains(() => 'action=accept')],
    test_elicitation_sep1330_enums: [none, contains(() => 'action=accept')],
    json_schema_2020_12_tool: [(i) => ({ name: `j${i}` }), contains((i) => `name=j${i}`)],
    test_reconnection: [none, equals(() => 'Reconnection test completed')]
};
// Per-server names: the server they name is their owner.
const OWNED = [
    [/^only_(.+)$/, (x) => x],
    [/^secret_(.+)$/, (x) => `secret of ${x}`],
    [/^added_(.+)$/, (x) => x]
];
const SKIP = {
    change_tools: "changes the server's tool list under every other session",
    crash: 'ends the server process',
    hang: 'never answers',
    stall_stdin: 'stops the server reading its stdin for good'
};

function contractOf(base) {
    if (CONTRACTS[base]) return CONTRACTS[base];
    for (const [pattern, want] of OWNED) {
        const m = pattern.exec(base);
        if (m) {
            const expect = want(m[1]);
            return [none, equals(() => expect)];
        }
    }
    return undefined;
}

// ---- one session --------------------------------------------------------------------------

/** Every page of a list method; `key` names the result's array. */
async function allPages(list, key, reqOpts) {
    const items = [];
    let cursor;
    for (let n = 0; n < MAX_PAGES; n++) {
        const page = await list(cursor === undefined ? undefined : { cursor }, reqOpts());
        items.push(...page[key]);
        cursor = page.nextCursor;
        if (cursor === undefined || cursor === null) return items;
    }
    throw new StepFailed(`${key}: still a nextCursor after ${MAX_PAGES} pages`);
}

function checkListing(names, opts) {
    const seen = new Set();
    const twice = new Set();
    for (const n of names) (seen.has(n) ? twice : seen).add(n);
    if (twice.size) throw new StepFailed(`listed more than once: ${[...twice].sort()}`);
    const all = JSON.stringify([...seen].sort());
    const missing = opts.require.filter((n) => !seen.has(n)).sort();
    if (missing.length) throw new StepFailed(`tools/list lacks ${JSON.stringify(missing)} (has ${all})`);
    const present = opts.forbid.filter((n) => seen.has(n)).sort();
    if (present.length) throw new StepFailed(`tools/list has ${JSON.stringify(present)}, which it must not (has ${all})`);
}

async function callTools(client, s, reqOpts) {
    const i = s.index;
    for (const name of s.tools) {
        const [owner, base] = split(name);
        if (SKIP[base]) {
            s.skipped[`tools/call ${base}`] = SKIP[base];
            continue;
        }
        const contract = contractOf(base);
        if (!contract) {
            s.skipped[`tools/call ${base}`] = 'fed_client.mjs has no call contract for it';
            continue;
        }
        const [args, check] = contract;
        s.step = `tools/call ${name}`;
        const result = await client.callTool({ name, arguments: args(i) }, undefined, reqOpts());
        const error = check(result, owner, i);
        if (error) throw new StepFailed(error);
        s.calls += 1;
    }
}

// greet, <server>_prompt and test_simple_prompt: the prompts that take no required argument.
const PROMPTS = /^(greet|.+_prompt)$/;

async function prompts(client, s, reqOpts) {
    s.step = 'prompts';
    const listed = await allPages((p, o) => client.listPrompts(p, o), 'prompts', reqOpts);
    for (const p of listed) {
        const [owner, base] = split(p.name);
        if (!PROMPTS.test(base)) continue;
        s.step = `prompts/get ${p.name}`;
        const params = { name: p.name };
        if (base === 'greet') params.arguments = { who: 'fed' };
        const got = await client.getPrompt(params, reqOpts());
        const text = got.messages.map((m) => m.content?.text ?? '').join('');
        if (base === 'greet' && owner !== null && text !== `${owner} greets fed`) {
            throw new StepFailed(`answered ${JSON.stringify(text)}, but the prefix names ${JSON.stringify(owner)}`);
        }
        if (!text) throw new StepFailed("no text in the prompt's messages");
    }
}

async function resources(client, s, reqOpts) {
    s.step = 'resources';
    const listed = await allPages((p, o) => client.listResources(p, o), 'resources', reqOpts);
    for (const r of listed) {
        s.step = `resources/read ${r.uri}`;
        const got = await client.readResource({ uri: r.uri }, reqOpts());
        if (!got.contents?.length) throw new StepFailed('no contents');
        const m = /(?:served by|readme of) ([a-z0-9_-]+)$/.exec(r.description ?? '');
        if (m) {
            const text = got.contents[0].text ?? '';
            if (!text.endsWith(`of ${m[1]}`)) {
                throw new StepFailed(`read ${JSON.stringify(text)}, but the listing says ${JSON.stringify(r.description)}`);
            }
        }
    }
}

// FED_CLIENT_TRACE=1: every request and SSE event of every session on stderr (diagnosis only).
const TRACE = process.env.FED_CLIENT_TRACE === '1';

function traced(s, method, init, response) {
    const h = new Headers(init?.headers);
    const what = method === 'POST' ? String(init.body).slice(0, 120) : `last-event-id=${h.get('last-event-id')}`;
    log(`trace ${s.index} ${method} ${what} -> ${response.status} ${response.headers.get('content-type')}`);
    if (!response.body || !String(response.headers.get('content-type')).includes('event-stream')) return response;
    const [mine, theirs] = response.body.tee();
    (async () => {
        const decoder = new TextDecoder();
        let buf = '';
        try {
            for await (const chunk of mine) {
                buf += decoder.decode(chunk, { stream: true });
                let m;
                while ((m = /\r?\n\r?\n/.exec(buf))) {
                    log(`trace ${s.index} ${method} event: ${buf.slice(0, m.index).replace(/\r?\n/g, ' | ').slice(0, 300)}`);
                    buf = buf.slice(m.index + m[0].length);
                }
            }
            log(`trace ${s.index} ${method} stream ended`);
        } catch (e) {
            log(`trace ${s.index} ${method} stream aborted: ${e?.name}`);
        }
    })();
    return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/** A Client and its transport, with a fetch that records the session id and DELETE answer. */
function open(opts, s) {
    const client = new Client(
        { name: `shardcat-fed-client-ts-${s.index}`, version: '1.0.0' },
        { capabilities: { sampling: {}, elicitation: {} } }
    );
    client.onerror = (e) => {
        const msg = String(e?.message ?? e);
        // Closing aborts the GET stream (and, closing early, open POSTs): expected, not news.
        if (s.closing && (e?.name === 'AbortError' || /AbortError|aborted/.test(msg))) return;
        // The Python SDK server (direct as well as through the gateway) sends the response of
        // test_reconnection again after the SSE-polling resume; the SDK resolved the call with
        // the first copy and reports each later one: said once per session, it fails nothing.
        if (msg.startsWith('Received a response for an unknown message ID')) {
            if (s.unknownResponses++ === 0) log(`session ${s.index}: during ${s.step}: ${msg} (later ones not logged)`);
            return;
        }
        log(`session ${s.index}: transport error during ${s.step}: ${msg}`);
    };
    client.setRequestHandler(CreateMessageRequestSchema, onSampling);
    client.setRequestHandler(ElicitRequestSchema, onElicitation);
    const recording = async (url, init) => {
        const method = init?.method ?? 'GET';
        if (method === 'POST') s.posts += 1;
        const response = await fetch(url, init);
        if (method === 'DELETE') s.deleteStatus = response.status;
        s.sessionId ??= response.headers.get('mcp-session-id') ?? undefined;
        return TRACE ? traced(s, method, init, response) : response;
    };
    // Few, quick GET-stream reconnects: a gateway that drops the stream should show up.
    const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
        fetch: recording,
        reconnectionOptions: { initialReconnectionDelay: 200, maxReconnectionDelay: 1000, reconnectionDelayGrowFactor: 1.5, maxRetries: 2 }
    });
    const setVersion = transport.setProtocolVersion.bind(transport);
    transport.setProtocolVersion = (v) => { s.version = v; setVersion(v); };
    return { client, transport };
}

async function listTools(client, s, opts, reqOpts) {
    s.step = 'tools/list';
    s.tools = (await allPages((p, o) => client.listTools(p, o), 'tools', reqOpts)).map((t) => t.name);
    checkListing(s.tools, opts);
}

async function steps(client, s, opts, reqOpts) {
    await listTools(client, s, opts, reqOpts);
    await callTools(client, s, reqOpts);
    await prompts(client, s, reqOpts);
    await resources(client, s, reqOpts);
}

/** --close-early: one call of server --servers[(i / 3) % n], then the transport closed. */
async function abandon(client, s, opts, reqOpts) {
    await listTools(client, s, opts, reqOpts);
    const server = SERVERS[Math.floor(s.index / 3) % SERVERS.length];
    const variant = s.index % 3;
    const base = variant === 2 ? 'echo' : 'progress';
    const name = nameOf(s.tools, server, base);
    if (!name) throw new StepFailed(`no ${base} of ${server} listed`);
    s.step = `tools/call ${name}`;
    if (variant === 2) {
        const r = await client.callTool({ name, arguments: { text: `x${s.index}` } }, undefined, reqOpts());
        const error = equals(() => `x${s.index}`)(r);
        if (error) throw new StepFailed(error);
        s.calls += 1;
        s.skipped['close-early echo'] = 'answered, then closed without DELETE';
        return;
    }
    let progressed;
    const firstProgress = new Promise((r) => { progressed = r; });
    const posts = s.posts;
    const call = client.callTool({ name, arguments: ABANDONED_PROGRESS }, undefined,
        { ...reqOpts(), onprogress: () => progressed() });
    // The call's promise rejects once the transport is closed: that is the point.
    const settled = call.then(() => 'answered', () => 'aborted');
    if (variant === 0) {
        const first = await Promise.race([firstProgress.then(() => 'progress'), settled, sleep(reqOpts().timeout)]);
        if (first !== 'progress') throw new StepFailed(`no progress notification before closing (${first ?? 'timed out'})`);
        s.skipped['close-early progress mid-call'] = 'closed after the first progress notification';
    } else {
        while (s.posts === posts) await sleep(1);
        s.skipped['close-early progress at once'] = 'closed as soon as the POST was sent';
    }
}

async function runSession(index, opts, deadline) {
    const s = {
        index, step: 'connect', version: undefined, skipped: {}, sessionId: undefined,
        deleteStatus: undefined, tools: [], calls: 0, posts: 0, closing: false, unknownResponses: 0
    };
    const remaining = () => Math.max(1, deadline - Date.now());
    // Every SDK request gets the time left as its own timeout (the SDK default would be 60 s).
    const reqOpts = () => ({ timeout: remaining() });
    let error = null;
    let timer;
    const timedOut = new Promise((r) => { timer = setTimeout(() => r('timeout'), remaining()); });
    const { client, transport } = open(opts, s);
    // The steps settle to null or their error (a late rejection after a timeout is caught too).
    const work = (async () => {
        await client.connect(transport, reqOpts());
        await (opts.closeEarly ? abandon : steps)(client, s, opts, reqOpts);
    })().then(() => null, (e) => describe(e));
    const outcome = await Promise.race([work, timedOut]);
    clearTimeout(timer);
    error = outcome === 'timeout' ? `timed out after ${opts.timeoutS} s` : outcome;
    error = (await closeSession(client, transport, s, opts, error)) ?? error;
    return { s, error };
}

/** DELETE (unless --close-early), then close; an error of closing, if no earlier one. */
async function closeSession(client, transport, s, opts, error) {
    s.closing = true;
    const step = s.step;
    s.step = 'close';
    let closeError = null;
    const graced = new Promise((r) => setTimeout(() => r('timeout'), CLOSE_GRACE_MS));
    const closing = (async () => {
        if (!opts.closeEarly && transport.sessionId !== undefined) {
            try {
                await transport.terminateSession();
            } catch (e) {
                closeError = `DELETE failed: ${describe(e)}`;
            }
        }
        await client.close();
    })();
    if ((await Promise.race([closing.then(() => 'closed'), graced])) === 'timeout') {
        closeError = `closing took more than ${CLOSE_GRACE_MS} ms`;
    }
    if (error !== null) {
        s.step = step;
        return null;
    }
    if (closeError) return closeError;
    if (!opts.closeEarly && s.sessionId !== undefined) {
        if (s.deleteStatus === undefined) return 'no DELETE was sent for the session';
        if (s.deleteStatus !== 200 && s.deleteStatus !== 405) return `DELETE answered HTTP ${s.deleteStatus}`;
    }
    if (opts.closeEarly && s.deleteStatus !== undefined) return 'a DELETE was sent, though closing early';
    return null;
}

// Error text with its cause: undici says only "fetch failed" and hides ECONNREFUSED etc. there.
function describe(e) {
    if (e instanceof StepFailed) return e.message;
    const c = e?.cause;
    return `${e?.name ?? 'Error'}: ${e?.message ?? e}` + (c ? ` (cause: ${c.code ?? c.message ?? c})` : '');
}

async function main() {
    let opts;
    try {
        opts = parseArgs(process.argv.slice(2));
    } catch (e) {
        log(e.message);
        process.exit(2);
    }
    SERVERS = opts.servers;
    SEPARATOR = opts.separator;
    const deadline = Date.now() + opts.timeoutS * 1000;
    const out = await Promise.all(Array.from({ length: opts.sessions }, (_, i) => runSession(i, opts, deadline)));
    const failed = [];
    const skipped = {};
    const versions = new Set();
    for (const { s, error } of out) {
        if (error !== null) failed.push({ session: s.index, step: s.step, error });
        for (const [step, reason] of Object.entries(s.skipped)) {
            skipped[step] ??= [];
            if (!skipped[step].includes(reason)) skipped[step].push(reason);
        }
        if (s.version) versions.add(s.version);
    }
    const report = {
        label: opts.label,
        mode: 'legacy',
        sessions: opts.sessions,
        passed: opts.sessions - failed.length,
        failed,
        skipped_steps: Object.fromEntries(Object.entries(skipped).map(([k, v]) => [k, v.join('; ')])),
        versions: [...versions].sort(),
        tools: out[0]?.s.tools ?? [],
        calls: out.reduce((n, { s }) => n + s.calls, 0)
    };
    const unknown = out.reduce((n, { s }) => n + s.unknownResponses, 0);
    if (unknown) log(`${unknown} responses to requests already answered, over all sessions`);
    const code = failed.length === 0 ? 0 : 1;
    process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(code));
}

await main();
