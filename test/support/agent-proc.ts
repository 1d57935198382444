// Running `connector-acl agent` inside a site's Connector namespace, as systemd would run it on
// the box, and reaching HTTP listeners inside a namespace from the test process.
//
// HTTP across the namespace boundary: a tiny relay (node -e) runs inside the namespace. Unix
// sockets live in the filesystem, which namespaces share, so
//   test ──unix socket──► relay in ns ──TCP──► 127.0.0.1:PORT in ns        (unixToTcp)
//   agent in ns ──TCP──► relay in ns ──unix socket──► test's own server   (tcpToUnix)
// Nothing listens or routes in the root namespace's network.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { cliPath, repoRoot, type Site } from '../../agent/harness/index.js';

export interface LogLine {
  level: number;
  event?: string;
  msg?: string;
  [k: string]: unknown;
}

/** The agent process inside the Connector namespace, with its JSON log lines. */
export class AgentProcess {
  readonly lines: LogLine[] = [];
  readonly stderr: string[] = [];
  readonly child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: { test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  private done = false;

  constructor(readonly site: Site, args: string[], env: NodeJS.ProcessEnv = process.env) {
    this.child = spawn('ip', ['netns', 'exec', site.connector, process.execPath, cliPath(), ...args], { cwd: repoRoot(), env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdin.end();
    createInterface({ input: this.child.stdout }).on('line', (text) => {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { level: 30, msg: text };
      }
      this.lines.push(line);
      this.waiters = this.waiters.filter((w) => {
        if (!w.test(line)) return true;
        w.resolve(line);
        return false;
      });
    });
    createInterface({ input: this.child.stderr }).on('line', (l) => this.stderr.push(l));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => {
      this.done = true;
      resolve({ code, signal });
    }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return !this.done;
  }

  /** Resolves with the first log line (past or future) matching; rejects after timeoutMs or on exit. */
  waitFor(test: (l: LogLine) => boolean, timeoutMs = 15_000, what = 'log line'): Promise<LogLine> {
    const seen = this.lines.find(test);
    if (seen) return Promise.resolve(seen);
    return this.waitForNext(test, timeoutMs, what);
  }

  /** Like waitFor, but only lines logged from now on. */
  waitForNext(test: (l: LogLine) => boolean, timeoutMs = 15_000, what = 'log line'): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${what}: not logged within ${timeoutMs} ms; last lines:\n${this.tail()}`)), timeoutMs);
      const w = { test, resolve: (l: LogLine) => { clearTimeout(timer); resolve(l); } };
      this.waiters.push(w);
      void this.exited.then(() => {
        if (this.waiters.includes(w)) {
          clearTimeout(timer);
          reject(new Error(`${what}: the agent exited first; last lines:\n${this.tail()}`));
        }
      });
    });
  }

  event(name: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((l) => l.event === name, timeoutMs, `event ${name}`);
  }

  nextEvent(name: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitForNext((l) => l.event === name, timeoutMs, `event ${name}`);
  }

  tail(n = 15): string {
    return [...this.lines.slice(-n).map((l) => JSON.stringify(l)), ...this.stderr.slice(-5)].join('\n');
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.done) this.child.kill(sig);
  }

  async stop(timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.done) return this.exited;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  async kill9(): Promise<void> {
    if (this.done) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

const RELAY_SOURCE = `
const net = require('net');
const [mode, a, b] = process.argv.slice(1);
const hp = (s) => { const i = s.lastIndexOf(':'); return { host: s.slice(0, i), port: Number(s.slice(i + 1)) }; };
const target = () => mode === 'unix2tcp' ? net.connect(hp(b)) : net.connect(b);
const server = net.createServer((c) => {
  const up = target();
  c.pipe(up).pipe(c);
  c.on('error', () => up.destroy());
  up.on('error', () => c.destroy());
});
server.on('error', (e) => { console.error(e.message); process.exit(1); });
if (mode === 'unix2tcp') server.listen(a, () => console.log('ready'));
else { const { host, port } = hp(a); server.listen(port, host, () => console.log('ready')); }
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

/** A relay process inside a namespace; `stop()` ends it. */
export class Relay {
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {}

  static async start(ns: string, mode: 'unix2tcp' | 'tcp2unix', listen: string, target: string): Promise<Relay> {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', RELAY_SOURCE, mode, listen, target], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`relay in ${ns} did not start: ${err}`)), 10_000);
      child.stdout.once('data', () => { clearTimeout(t); resolve(); });
      child.once('exit', () => { clearTimeout(t); reject(new Error(`relay in ${ns} exited: ${err}`)); });
    });
    return new Relay(child);
  }

  stop(): void {
    this.child.stdin.end();
    setTimeout(() => this.child.kill('SIGKILL'), 500).unref();
  }
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** One HTTP request over a unix socket (curl --unix-socket). `json` is sent as curl's --json does. */
export function httpOverUnix(
  socketPath: string, urlPath: string,
  init: { method?: string; headers?: Record<string, string>; json?: unknown; body?: string | Buffer; timeoutMs?: number } = {},
): Promise<HttpAnswer> {
  const headers: Record<string, string> = { Host: 'localhost', ...init.headers };
  let body = init.body;
  if (init.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers.Accept = 'application/json';
    body = JSON.stringify(init.json);
  }
  if (body !== undefined) headers['Content-Length'] = String(Buffer.byteLength(body));
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: urlPath, method: init.method ?? 'GET', headers, timeout: init.timeoutMs ?? 15_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: parsed });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${urlPath}: timed out`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      // A server that refuses a body (413) may close before reading it all.
      if (e.code === 'EPIPE' || e.code === 'ECONNRESET') reject(Object.assign(e, { hint: 'connection closed by the server' }));
      else reject(e);
    });
    req.end(body);
  });
}

/** A unix-socket server in the test process that pipes each connection to a TCP port (switchable). */
export class UnixToTcp {
  private readonly live = new Set<net.Socket>();
  private target: { host: string; port: number };

  private constructor(private readonly server: net.Server, target: { host: string; port: number }) {
    this.target = target;
  }

  /** New connections go to `target`; open ones (HTTP keep-alive) are cut, so clients reconnect. */
  switchTo(target: { host: string; port: number }): void {
    this.target = target;
    for (const s of this.live) s.destroy();
    this.live.clear();
  }

  static async start(socketPath: string, target: { host: string; port: number }): Promise<UnixToTcp> {
    let self: UnixToTcp | undefined;
    const server = net.createServer((c) => {
      const up = net.connect(self!.target);
      self!.live.add(c);
      c.on('close', () => self!.live.delete(c));
      c.pipe(up).pipe(c);
      c.on('error', () => up.destroy());
      up.on('error', () => c.destroy());
      c.on('close', () => up.destroy());
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    self = new UnixToTcp(server, target);
    return self;
  }

  close(): Promise<void> {
    for (const s of this.live) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
