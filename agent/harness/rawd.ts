// The raw-IP agent: a small python3 program run inside a host namespace
// (`ip netns exec NS python3 -c RAW_AGENT_SOURCE 47 253`), because Node cannot open raw sockets.
// It sends IP packets of any protocol number from a chosen address of the host, and it reflects:
// every packet of the listed protocols that arrives with a probe payload ("cacl:<token>") is sent
// back from the address it arrived on to its source, with the same protocol ("echo cacl:<token>").
// To conntrack that answer is the reply of the flow, so it measures the reply direction exactly
// like a UDP echo does.
//
// GRE (47) payloads get a 4-byte GRE version 0 header (protocol 0x88b5, "local experimental") in
// front, so conntrack's GRE tracker treats them like any other protocol (a version 1 header would
// be parsed as PPTP and the packet left untracked, i.e. invalid).
//
// Lines in:   "<id> send <4|6> <protocol> <source address> <destination address> <payload hex>"
// Lines out:  "0 ready" once, then "<id> ok" or "<id> err <message>", and "0 echo <token>" for
//             every reflected answer that comes back to this host
// Only python3's standard library is used (socket, select, os, sys), nothing outside python3-minimal.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';

export const RAW_AGENT_SOURCE = String.raw`
import os, select, socket, sys

PROTOS = [int(p) for p in sys.argv[1:]]
GRE_HEADER = b'\x00\x00\x88\xb5'
MARK = b'cacl:'

def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()

def framed(proto, payload):
    return (GRE_HEADER + payload) if proto == 47 else payload

senders = {}
def send(fam, proto, src, dst, payload):
    key = (fam, proto, src)
    s = senders.get(key)
    if s is None:
        s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_RAW, proto)
        s.bind((src, 0))
        senders[key] = s
    s.sendto(framed(proto, payload), (dst, 0))

listeners = {}
for p in PROTOS:
    s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, p)
    listeners[s4.fileno()] = (s4, 4, p)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, p)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    listeners[s6.fileno()] = (s6, 6, p)

def reflect(s, fam, proto):
    if fam == 4:
        data = s.recv(65535)
        ihl = (data[0] & 15) * 4
        src = socket.inet_ntop(socket.AF_INET, data[12:16])
        dst = socket.inet_ntop(socket.AF_INET, data[16:20])
        body = data[ihl:]
    else:
        body, anc, _flags, addr = s.recvmsg(65535, socket.CMSG_SPACE(20))
        src = addr[0]
        dst = None
        for level, kind, value in anc:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                dst = socket.inet_ntop(socket.AF_INET6, value[:16])
        if dst is None:
            return
    if proto == 47:
        body = body[4:]
    if body.startswith(MARK):
        try:
            send(fam, proto, dst, src, b'echo ' + body)
        except OSError as e:
            out('0 warn reflect ' + str(e))
    elif body.startswith(b'echo ' + MARK):
        token = body[10:].split()[0].decode('ascii', 'replace') if len(body) > 10 else ''
        out('0 echo ' + token)

def handle(line):
    parts = line.split()
    if len(parts) < 2:
        return
    rid = parts[0]
    try:
        if parts[1] != 'send' or len(parts) != 7:
            raise ValueError('bad request')
        send(int(parts[2]), int(parts[3]), parts[4], parts[5], bytes.fromhex(parts[6]))
        out(rid + ' ok')
    except Exception as e:
        out(rid + ' err ' + str(e).replace('\n', ' '))

out('0 ready')
buf = b''
while True:
    ready, _, _ = select.select([0] + list(listeners), [], [])
    for fd in ready:
        if fd == 0:
            chunk = os.read(0, 65536)
            if not chunk:
                sys.exit(0)
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                handle(line.decode())
        else:
            reflect(*listeners[fd])
`;

/** Protocols the raw agent listens for and reflects: GRE and 253 (RFC 3692 experimentation). */
export const RAW_PROTOCOLS = [47, 253] as const;

export class RawAgent {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly pending = new Map<number, { resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private nextId = 1;
  private stderr = '';
  private exited = false;
  private readonly echoes = new Map<string, () => void>();
  readonly ready: Promise<void>;

  constructor(readonly ns: string, startTimeoutMs = 10_000) {
    this.child = spawn('ip', ['netns', 'exec', ns, 'python3', '-u', '-c', RAW_AGENT_SOURCE, ...RAW_PROTOCOLS.map(String)], { stdio: ['pipe', 'pipe', 'pipe'] });
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
    this.ready.catch(() => undefined);
    const readyTimer = setTimeout(() => readyReject(new Error(`raw agent in ${ns} did not start within ${startTimeoutMs} ms: ${this.stderr}`)), startTimeoutMs);
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const [idText, status, ...rest] = line.split(' ');
      const id = Number(idText);
      if (id === 0) {
        if (status === 'echo') {
          this.echoes.get(rest[0])?.();
        } else if (status === 'ready') {
          clearTimeout(readyTimer);
          readyResolve();
        } else {
          this.stderr = (this.stderr + `${line}\n`).slice(-4000);
        }
        return;
      }
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      clearTimeout(p.timer);
      if (status === 'ok') p.resolve();
      else p.reject(new Error(`raw agent in ${ns}: ${rest.join(' ')}`));
    });
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      clearTimeout(readyTimer);
      const e = new Error(`raw agent in ${ns} exited (${signal ?? code}): ${this.stderr.trim()}`);
      readyReject(e);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      this.pending.clear();
    });
  }

  /** Sends one IP packet of `protocol` from `src` (an address of this host) to `dst`. */
  async send(family: 4 | 6, protocol: number, src: string, dst: string, payload: string, deadlineMs = 5_000): Promise<void> {
    await this.ready;
    if (this.exited) throw new Error(`raw agent in ${this.ns} is not running`);
    const id = this.nextId++;
    const hex = Buffer.from(payload, 'utf8').toString('hex');
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`raw agent in ${this.ns}: no answer within ${deadlineMs} ms`));
      }, deadlineMs);
      this.pending.set(id, { resolve, reject, timer });
      this.child.stdin.write(`${id} send ${family} ${protocol} ${src} ${dst} ${hex}\n`);
    });
  }

  /** Resolves true when the reflected answer for `token` comes back, false after timeoutMs. */
  awaitEcho(token: string, timeoutMs: number): { promise: Promise<boolean>; cancel(): void } {
    let done!: (v: boolean) => void;
    const promise = new Promise<boolean>((resolve) => (done = resolve));
    const timer = setTimeout(() => finish(false), timeoutMs);
    const finish = (v: boolean): void => {
      clearTimeout(timer);
      if (this.echoes.get(token) === hit) this.echoes.delete(token);
      done(v);
    };
    const hit = (): void => finish(true);
    this.echoes.set(token, hit);
    return { promise, cancel: () => finish(false) };
  }

  killNow(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
