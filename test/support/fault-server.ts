// A control plane that misbehaves on request: answers chosen per request by a handler — JSON,
// raw bytes, an error status, a body dripped slowly, a hang, a dropped connection. Records what
// the client sent (method, path, headers) so tests can check credentials and If-None-Match.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  /** Path and query, e.g. `/client/v4/accounts/a/magic/sites/s/acls?page=2`. */
  url: string;
  headers: http.IncomingHttpHeaders;
}

export type Fault =
  | { kind: 'json'; status?: number; body: unknown; headers?: Record<string, string> }
  | { kind: 'raw'; status?: number; body: string; headers?: Record<string, string> }
  /** Headers at once, then the body `chunkBytes` at a time every `intervalMs`. */
  | { kind: 'drip'; status?: number; body: string; chunkBytes: number; intervalMs: number }
  /** Never answers (until the server closes). */
  | { kind: 'hang' }
  /** Drops the connection without an answer. */
  | { kind: 'reset' }
  | { kind: 'delay'; ms: number; then: Fault };

export type FaultHandler = (req: RecordedRequest, index: number) => Fault;

/** Cloudflare's envelope around a result. */
export const cfEnvelope = (result: unknown, extra: Record<string, unknown> = {}) =>
  ({ errors: [], messages: [], result, success: true, ...extra });

export class FaultServer {
  readonly requests: RecordedRequest[] = [];
  private timers = new Set<NodeJS.Timeout>();

  private constructor(private readonly server: http.Server, readonly url: string, public handler: FaultHandler) {}

  /** Listens on 127.0.0.1 with a free port. `url` is `http://127.0.0.1:PORT` (no trailing slash). */
  static async start(handler: FaultHandler = () => ({ kind: 'json', body: cfEnvelope([]) })): Promise<FaultServer> {
    let self: FaultServer | undefined;
    const server = http.createServer((req, res) => self!.serve(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    self = new FaultServer(server, `http://127.0.0.1:${port}`, handler);
    return self;
  }

  /** The `…/client/v4` base URL a RemoteClient takes. */
  get baseUrl(): string {
    return `${this.url}/client/v4`;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const recorded = { method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers };
    this.requests.push(recorded);
    req.resume();
    this.play(this.handler(recorded, this.requests.length - 1), req, res);
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private play(fault: Fault, req: http.IncomingMessage, res: http.ServerResponse): void {
    switch (fault.kind) {
      case 'json':
      case 'raw': {
        if (fault.status === 304) return void res.writeHead(304, fault.headers).end();
        const text = fault.kind === 'json' ? JSON.stringify(fault.body) : fault.body;
        res.writeHead(fault.status ?? 200, { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(text)), ...fault.headers });
        res.end(text);
        return;
      }
      case 'drip': {
        res.writeHead(fault.status ?? 200, { 'Content-Type': 'application/json' });
        let offset = 0;
        const step = () => {
          if (res.destroyed) return;
          if (offset >= fault.body.length) return void res.end();
          res.write(fault.body.slice(offset, offset + fault.chunkBytes));
          offset += fault.chunkBytes;
          this.later(fault.intervalMs, step);
        };
        step();
        return;
      }
      case 'hang':
        return;
      case 'reset':
        req.socket.destroy();
        return;
      case 'delay':
        this.later(fault.ms, () => this.play(fault.then, req, res));
        return;
    }
  }
}
