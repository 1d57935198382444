// The harness side of a host agent: starts `node -e HOST_AGENT_SOURCE` inside a namespace and
// sends it JSON-lines requests. Every request has a deadline; a dead agent fails its requests.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { HOST_AGENT_SOURCE } from './hostd.js';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class HostAgent {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderr = '';
  private exited = false;
  private readonly listening = new Map<string, Promise<unknown>>();
  readonly ready: Promise<void>;

  constructor(readonly ns: string, startTimeoutMs = 10_000) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', HOST_AGENT_SOURCE], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdin.on('error', () => undefined);
    this.child.stderr.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString('utf8')).slice(-4000);
    });
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    const readyTimer = setTimeout(() => readyReject(new Error(`host agent in ${ns} did not start within ${startTimeoutMs} ms: ${this.stderr}`)), startTimeoutMs);
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      let msg: { id: number | null; ok: boolean; result?: unknown; error?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.id === 0) {
        clearTimeout(readyTimer);
        readyResolve();
        return;
      }
      if (msg.id === null) {
        this.stderr = (this.stderr + `${msg.error}\n`).slice(-4000);
        return;
      }
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`host agent in ${ns}: ${msg.error}`));
    });
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      clearTimeout(readyTimer);
      const e = new Error(`host agent in ${ns} exited (${signal ?? code}): ${this.stderr.trim()}`);
      readyReject(e);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      this.pending.clear();
    });
    // An unawaited `ready` must not become an unhandled rejection.
    this.ready.catch(() => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  request<T>(op: string, args: Record<string, unknown>, deadlineMs: number): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`host agent in ${this.ns} is not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`host agent in ${this.ns}: ${op} got no answer within ${deadlineMs} ms`));
      }, deadlineMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.child.stdin.write(`${JSON.stringify({ id, op, ...args })}\n`);
    });
  }

  /** Starts (once) a TCP echo server or UDP echo listener on `port`, on all addresses of both families. */
  listen(proto: 'tcp' | 'udp', port: number): Promise<unknown> {
    const key = `${proto}/${port}`;
    let p = this.listening.get(key);
    if (!p) {
      p = this.request('listen', { proto, port }, 5_000);
      p.catch(() => this.listening.delete(key));
      this.listening.set(key, p);
    }
    return p;
  }

  /** Closes stdin (the agent exits on its own) and kills it if it lingers. */
  stop(): void {
    if (this.exited) return;
    this.child.stdin.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), 500);
    t.unref();
    this.child.once('exit', () => clearTimeout(t));
  }

  killNow(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
