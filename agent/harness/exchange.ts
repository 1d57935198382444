// Exchanges: one flow's first packet(s) and the answer, measured packet by packet in the kernel.
//
// An exchange sends from `from` (optionally from a given address and source port) to `to`:
//   tcp   a connection with one line echoed back (the destination runs an echo server for the round)
//   udp   one datagram from a socket bound to (src, srcPort); the destination's socket echoes it
//   icmp  one echo request (`ping -I src`); the destination's kernel answers
//   raw   one IP packet of any protocol number (GRE 47, 253, …) sent by the raw agent (python3);
//         the destination's raw agent reflects it back, which conntrack sees as the flow's reply
// and reports what the counting tables saw (site.ts: hostCountRuleset, tunnelCountRuleset):
//   sent       packets of the flow that left `from`        delivered  packets that arrived at `to`
//   answered   packets `to` sent back on the same flow     replied    answers that arrived at `from`
//   tunnel     packets that crossed the tunnel, each way   ttl        TTL / hop limit on arrival, each way
// So the facts do not depend on the applications: a TCP SYN that arrives counts as delivered even
// when its SYN-ACK is dropped.
//
// `runExchanges` runs many at once: it splits them into rounds in which no two exchanges share a
// conntrack tuple (or address pair and protocol, for protocols without ports; with `exactTtl` for
// every protocol) or a TCP port in conflicting roles, reads every counter once before and once after each round, and can flush the Connector's
// conntrack table between rounds so every round starts with fresh flows.
import { canonicalAddress, HOST_COUNT_TABLE, TUNNEL_COUNT_TABLE, type Host, type Site } from './site.js';
import { RAW_PROTOCOLS, RawAgent } from './rawd.js';
import { countProbe } from './stats.js';
import type { Family } from './probes.js';

export type ExchangeProto = 'tcp' | 'udp' | 'icmp' | 'raw';

export interface ExchangeSpec {
  from: Host;
  to: Host;
  proto: ExchangeProto;
  /** For `raw`: the IP protocol number (default 253, "experimentation"). */
  ipProto?: number;
  family?: Family;
  /** Source address, one of `from`'s (default its main address of the family). */
  src?: string;
  /** Destination address, one of `to`'s (default its main address of the family). */
  dst?: string;
  /** TCP/UDP source port (default a fresh one from the site). */
  srcPort?: number;
  /** TCP/UDP destination port (required for tcp and udp). */
  dstPort?: number;
  /** Free text carried into the result (row names, flow descriptions). */
  label?: string;
}

export interface ExchangeOptions {
  /** How long the application waits for the answer (default 1000 ms). Drops cost this much per round. */
  timeoutMs?: number;
  /** Flush the Connector's conntrack table before every round (default false). */
  flushConntrack?: boolean;
  /** At most this many exchanges per round (default 48). */
  maxPerRound?: number;
  /** Pause after the applications finished, before the counters are read (default 40 ms). */
  settleMs?: number;
  /**
   * Never run two exchanges of the same address pair and protocol in one round, so every TTL
   * (counted per address pair and protocol) belongs to one exchange (default false).
   */
  exactTtl?: boolean;
}

export interface ExchangeResult {
  label?: string;
  from: string;
  to: string;
  proto: ExchangeProto;
  ipProto: number;
  family: Family;
  src: string;
  dst: string;
  srcPort?: number;
  dstPort?: number;
  sent: number;
  delivered: number;
  answered: number;
  replied: number;
  /** Undefined when the site has no tunnel. */
  tunnel?: { forward: number; reverse: number };
  /**
   * Distinct TTLs (hop limits) the packets arrived with, at `to` (forward) and at `from` (reverse).
   * They are counted per address pair and protocol: `ambiguous` when another exchange of the same
   * round shared both (then the lists may mix the two).
   */
  ttl: { forward: number[]; reverse: number[]; ambiguous?: boolean };
  /** The application saw its answer (TCP line echoed, UDP echo, ping reply, raw reflection). */
  answeredApp: boolean;
  /** TCP: the handshake completed. */
  connected?: boolean;
  error?: string;
  /** Round number (0-based) the exchange ran in. */
  round: number;
}

/** What the packets of one direction did: never arrived, arrived directly, or arrived via the tunnel. */
export type PathSeen = 'drop' | 'local' | 'cloudflare';

export const forwardPath = (r: ExchangeResult): PathSeen =>
  r.delivered === 0 ? 'drop' : (r.tunnel?.forward ?? 0) > 0 ? 'cloudflare' : 'local';

/** The answer's path; undefined when nothing was answered (the request never arrived). */
export const replyPath = (r: ExchangeResult): PathSeen | undefined =>
  r.answered === 0 ? undefined : r.replied === 0 ? 'drop' : (r.tunnel?.reverse ?? 0) > 0 ? 'cloudflare' : 'local';

/** TTL (hop limit) a packet from a host (64) has after `hops` routers: local 1, via Cloudflare 3. */
export const TTL_LOCAL = 63;
export const TTL_VIA_TUNNEL = 61;

/**
 * Inconsistencies between the counters of one exchange, whatever the policy: a packet that
 * crossed the tunnel but never arrived, one that took the tunnel more than once (a loop) or
 * arrived with the wrong TTL for its path, a flow that lost some packets but not all.
 */
export function exchangeAnomalies(r: ExchangeResult): string[] {
  const out: string[] = [];
  const check = (dir: 'forward' | 'reverse', sent: number, arrived: number, crossed: number, ttls: number[]): void => {
    if (arrived === 0) {
      if (crossed > 0) out.push(`${dir}: ${crossed} packet(s) crossed the tunnel but none arrived`);
      return;
    }
    if (arrived > sent) out.push(`${dir}: ${arrived} packets arrived but only ${sent} were sent (duplicated or looped)`);
    if (arrived < sent) out.push(`${dir}: ${sent - arrived} of ${sent} packets were lost`);
    if (crossed > 0 && crossed !== arrived) out.push(`${dir}: ${crossed} tunnel crossings for ${arrived} packets (each must cross exactly once)`);
    const want = crossed > 0 ? TTL_VIA_TUNNEL : TTL_LOCAL;
    if (!r.ttl.ambiguous) {
      if (ttls.some((t) => t !== want)) out.push(`${dir}: arrived with TTL ${ttls.join('/')}, expected ${want} (${crossed > 0 ? 'via the tunnel' : 'direct'})`);
    } else if (ttls.some((t) => t !== TTL_LOCAL && t !== TTL_VIA_TUNNEL)) {
      // Shared with another exchange of the round: only TTLs no correct path produces are wrong.
      out.push(`${dir}: arrived with TTL ${ttls.join('/')}, neither direct (${TTL_LOCAL}) nor via the tunnel (${TTL_VIA_TUNNEL})`);
    }
  };
  check('forward', r.sent, r.delivered, r.tunnel?.forward ?? 0, r.ttl.forward);
  check('reverse', r.answered, r.replied, r.tunnel?.reverse ?? 0, r.ttl.reverse);
  return out;
}

const PROTO_LABEL: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 47: 'gre', 58: 'icmpv6', 132: 'sctp' };
export const ipProtoLabel = (n: number): string => PROTO_LABEL[n] ?? `proto ${n}`;

export function describeExchange(r: ExchangeResult): string {
  const at = (a: string, p?: number) => (p === undefined ? a : r.family === 6 ? `[${a}]:${p}` : `${a}:${p}`);
  const tunnel = r.tunnel ? ` tunnel ${r.tunnel.forward}/${r.tunnel.reverse}` : '';
  const ttl = r.ttl.forward.length || r.ttl.reverse.length
    ? ` ttl ${r.ttl.forward.join('/') || '-'}|${r.ttl.reverse.join('/') || '-'}${r.ttl.ambiguous ? '(shared)' : ''}` : '';
  return `${ipProtoLabel(r.ipProto)}/v${r.family} ${r.from} ${at(r.src, r.srcPort)} → ${r.to} ${at(r.dst, r.dstPort)}: `
    + `sent ${r.sent} delivered ${r.delivered} answered ${r.answered} replied ${r.replied}${tunnel}${ttl}`
    + `${r.answeredApp ? ' (answer seen)' : ''}${r.error ? ` (${r.error})` : ''}${r.label ? ` — ${r.label}` : ''}`;
}

// ---------------------------------------------------------------------------------------------
// Counters

type Counts = Map<string, number>;

let protocolNumbers: Map<string, number> | undefined;
function protocolNumber(name: string): number | undefined {
  if (!protocolNumbers) {
    protocolNumbers = new Map([['icmp', 1], ['tcp', 6], ['udp', 17], ['gre', 47], ['esp', 50], ['ah', 51], ['ipv6-icmp', 58], ['icmpv6', 58], ['sctp', 132], ['udplite', 136]]);
  }
  return protocolNumbers.get(name.toLowerCase());
}

const normalPart = (v: unknown): string => {
  if (typeof v === 'number') return String(v);
  const s = String(v);
  if (s.includes(':') || /^\d+\.\d+\.\d+\.\d+$/.test(s)) return canonicalAddress(s);
  return String(protocolNumber(s) ?? s);
};

interface SetJson { set?: { name: string; elem?: { elem?: { val: unknown; counter?: { packets: number } } }[] } }

/** Every element of every counting set of a table: `set|part|part…` → packets. */
function parseCounts(json: string): Counts {
  const out: Counts = new Map();
  const doc = JSON.parse(json) as { nftables: SetJson[] };
  for (const item of doc.nftables) {
    if (!item.set) continue;
    for (const e of item.set.elem ?? []) {
      if (!e.elem) continue;
      const val = e.elem.val as { concat?: unknown[] } | string | number;
      const parts = typeof val === 'object' && val !== null && Array.isArray(val.concat) ? val.concat : [val];
      out.set(`${item.set.name}|${parts.map(normalPart).join('|')}`, e.elem.counter?.packets ?? 0);
    }
  }
  return out;
}

async function readTable(site: Site, ns: string, table: string): Promise<Counts> {
  return parseCounts(await site.nft(ns, ['-j', 'list', 'table', 'inet', table]));
}

const delta = (before: Counts, after: Counts, key: string): number => (after.get(key) ?? 0) - (before.get(key) ?? 0);

/** TTL values whose counter grew for keys `set|prefix|<ttl>`. */
function ttlsGrown(before: Counts, after: Counts, sets: string[], prefix: string): number[] {
  const ttls = new Set<number>();
  for (const set of sets) {
    const head = `${set}|${prefix}|`;
    for (const [k, v] of after) {
      if (!k.startsWith(head)) continue;
      const rest = k.slice(head.length);
      if (rest.includes('|')) continue;
      if (v - (before.get(k) ?? 0) > 0) ttls.add(Number(rest));
    }
  }
  return [...ttls].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------------------------
// Raw agents, one per host, started on first use

const rawAgents = new WeakMap<Host, RawAgent>();
function rawAgent(host: Host): RawAgent {
  let a = rawAgents.get(host);
  if (!a) {
    a = new RawAgent(host.ns);
    host.site.adopt(a);
    rawAgents.set(host, a);
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Running

interface Resolved {
  spec: ExchangeSpec;
  from: Host;
  to: Host;
  proto: ExchangeProto;
  ipProto: number;
  family: Family;
  src: string;
  dst: string;
  srcPort?: number;
  dstPort?: number;
  token: string;
  attempts: number;
}

const hasPorts = (r: Resolved): boolean => r.proto === 'tcp' || r.proto === 'udp';

function resolveSpec(spec: ExchangeSpec): Resolved {
  if (spec.from.site !== spec.to.site) throw new Error('exchange between hosts of different sites');
  const family = spec.family ?? (spec.src?.includes(':') ? 6 : 4);
  const src = canonicalAddress(spec.src ?? spec.from.address(family));
  const dst = canonicalAddress(spec.dst ?? spec.to.address(family));
  const ipProto = spec.proto === 'tcp' ? 6 : spec.proto === 'udp' ? 17 : spec.proto === 'icmp' ? (family === 4 ? 1 : 58) : spec.ipProto ?? 253;
  const r: Resolved = { spec, from: spec.from, to: spec.to, proto: spec.proto, ipProto, family, src, dst, token: spec.from.site.nextToken(), attempts: 0 };
  if (spec.proto === 'tcp' || spec.proto === 'udp') {
    if (spec.dstPort === undefined) throw new Error(`${spec.proto} exchange needs a destination port`);
    r.dstPort = spec.dstPort;
    r.srcPort = spec.srcPort ?? spec.from.site.nextPort();
  }
  if (spec.proto === 'raw' && !(RAW_PROTOCOLS as readonly number[]).includes(ipProto)) {
    throw new Error(`raw exchange with protocol ${ipProto}: the raw agent reflects only ${RAW_PROTOCOLS.join(', ')}`);
  }
  return r;
}

/** Resources an exchange holds for its round: exclusive ones, or shared ones held in one role (listen / client). */
function resources(r: Resolved, exactTtl: boolean): { key: string; role: string; exclusive: boolean }[] {
  const out: { key: string; role: string; exclusive: boolean }[] = [];
  const pair = [r.src, r.dst].sort().join('~');
  if (exactTtl || !hasPorts(r)) out.push({ key: `pair|${pair}|${r.ipProto}`, role: 'x', exclusive: true });
  if (hasPorts(r)) {
    const ends = [`${r.src}#${r.srcPort}`, `${r.dst}#${r.dstPort}`].sort().join('~');
    out.push({ key: `ct|${r.ipProto}|${ends}`, role: 'x', exclusive: true });
  }
  if (r.proto === 'tcp') {
    out.push({ key: `tcpbind|${r.from.ns}|${r.src}|${r.srcPort}`, role: 'x', exclusive: true });
    // A listening socket on a port blocks every client bound to that port on the same host.
    out.push({ key: `tcpport|${r.from.ns}|${r.srcPort}`, role: 'client', exclusive: false });
    out.push({ key: `tcpport|${r.to.ns}|${r.dstPort}`, role: 'listen', exclusive: false });
  }
  return out;
}

function schedule(items: Resolved[], maxPerRound: number, exactTtl: boolean): Resolved[][] {
  const rounds: { items: Resolved[]; held: Map<string, string> }[] = [];
  for (const item of items) {
    const res = resources(item, exactTtl);
    let placed = false;
    for (const round of rounds) {
      if (round.items.length >= maxPerRound) continue;
      const ok = res.every((x) => {
        const role = round.held.get(x.key);
        return role === undefined || (!x.exclusive && role === x.role);
      });
      if (!ok) continue;
      for (const x of res) round.held.set(x.key, x.role);
      round.items.push(item);
      placed = true;
      break;
    }
    if (!placed) rounds.push({ items: [item], held: new Map(res.map((x) => [x.key, x.role])) });
  }
  return rounds.map((r) => r.items);
}

const LOCAL_ERRORS = new Set(['EADDRINUSE', 'EADDRNOTAVAIL', 'EACCES', 'EINVAL', 'EBADF', 'ERR_SOCKET_BAD_PORT']);

interface AppResult {
  answered: boolean;
  connected?: boolean;
  error?: string;
}

async function runApp(r: Resolved, timeoutMs: number): Promise<AppResult> {
  const deadline = 2 * timeoutMs + 5_000;
  switch (r.proto) {
    case 'tcp': {
      const reply = await r.from.agent.request<{ connected?: boolean; roundTrip?: boolean; error?: string }>('tcp', {
        host: r.dst, port: r.dstPort, srcPort: r.srcPort, localAddress: r.src, timeoutMs, token: r.token,
      }, deadline);
      return { answered: reply.roundTrip === true, connected: reply.connected === true, error: reply.error };
    }
    case 'udp': {
      const reply = await r.from.agent.request<{ replied: boolean; error?: string }>('usend', {
        address: r.src, port: r.srcPort, host: r.dst, dstPort: r.dstPort, token: r.token, timeoutMs,
      }, deadline);
      return { answered: reply.replied, error: reply.error };
    }
    case 'icmp': {
      const seconds = (timeoutMs / 1000).toFixed(3);
      const p = await r.from.site.exec(r.from.ns, ['ping', `-${r.family}`, '-n', '-q', '-c', '1', '-W', seconds, '-I', r.src, r.dst], { timeoutMs: timeoutMs + 5_000 });
      return { answered: p.code === 0, error: p.code === 0 || p.code === 1 ? undefined : `ping exit ${p.code}: ${p.stderr.trim()}` };
    }
    case 'raw': {
      const agent = rawAgent(r.from);
      await agent.ready;
      const echo = agent.awaitEcho(r.token, timeoutMs);
      try {
        await agent.send(r.family, r.ipProto, r.src, r.dst, `cacl:${r.token}`);
      } catch (e) {
        echo.cancel();
        return { answered: false, error: `EINVAL ${(e as Error).message}` };
      }
      return { answered: await echo.promise };
    }
  }
}

/** Runs exchanges in conflict-free rounds; results in the order of `specs`. */
export async function runExchanges(site: Site, specs: ExchangeSpec[], options: ExchangeOptions = {}): Promise<ExchangeResult[]> {
  const timeoutMs = options.timeoutMs ?? 1_000;
  const settleMs = options.settleMs ?? 40;
  const all = specs.map(resolveSpec);
  const results = new Map<Resolved, ExchangeResult>();
  let pending = all;
  let roundNo = 0;

  // Raw agents start once per host, before the first round.
  await Promise.all([...new Set(all.filter((r) => r.proto === 'raw').flatMap((r) => [r.from, r.to]))].map((h) => rawAgent(h).ready));

  for (let pass = 0; pending.length > 0 && pass < 3; pass++) {
    const retry: Resolved[] = [];
    for (const round of schedule(pending, options.maxPerRound ?? 48, options.exactTtl === true)) {
      const t0 = Date.now();
      const done = await runRound(site, round, roundNo++, timeoutMs, settleMs, options.flushConntrack === true);
      if (process.env.CACL_EXCHANGE_DEBUG) process.stderr.write(`exchange round ${roundNo - 1}: ${round.length} exchanges, ${Date.now() - t0} ms\n`);
      for (const [r, res] of done) {
        if (res === 'retry') retry.push(r);
        else results.set(r, res);
      }
    }
    pending = retry;
  }
  if (pending.length > 0) {
    throw new Error(`exchanges could not be sent (local socket errors, 3 attempts): ${pending.map((r) => `${r.proto} ${r.src}:${r.srcPort} → ${r.dst}:${r.dstPort}`).join(', ')}`);
  }
  return all.map((r) => results.get(r)!);
}

export async function exchange(spec: ExchangeSpec, options: ExchangeOptions = {}): Promise<ExchangeResult> {
  const [r] = await runExchanges(spec.from.site, [spec], options);
  return r;
}

async function runRound(site: Site, round: Resolved[], roundNo: number, timeoutMs: number, settleMs: number, flush: boolean): Promise<Map<Resolved, ExchangeResult | 'retry'>> {
  const graceMs = Math.max(500, timeoutMs);
  const hosts = [...new Set(round.flatMap((r) => [r.from, r.to]))];
  // Listeners for the round: TCP echo servers on the destination ports, UDP sockets on both ends.
  const listens = new Map<string, { host: Host; port: number }>();
  for (const r of round) if (r.proto === 'tcp') listens.set(`${r.to.ns}|${r.dstPort}`, { host: r.to, port: r.dstPort! });
  const binds = new Map<string, { host: Host; address: string; port: number }>();
  for (const r of round) {
    if (r.proto !== 'udp') continue;
    binds.set(`${r.from.ns}|${r.src}|${r.srcPort}`, { host: r.from, address: r.src, port: r.srcPort! });
    binds.set(`${r.to.ns}|${r.dst}|${r.dstPort}`, { host: r.to, address: r.dst, port: r.dstPort! });
  }
  await Promise.all([
    ...[...listens.values()].map((l) => l.host.agent.request('tlisten', { port: l.port }, 5_000)),
    ...[...binds.values()].map((b) => b.host.agent.request('ubind', { address: b.address, port: b.port }, 5_000)),
  ]);
  if (flush) await site.exec(site.connector, ['conntrack', '-F'], { timeoutMs: 5_000 });

  const snapshot = () => Promise.all([
    Promise.all(hosts.map((h) => readTable(site, h.ns, HOST_COUNT_TABLE))),
    site.cloudflare ? readTable(site, site.cloudflare, TUNNEL_COUNT_TABLE) : Promise.resolve(undefined),
  ]);
  const t0 = Date.now();
  const [hostBefore, cfBefore] = await snapshot();
  const t1 = Date.now();
  const apps = await Promise.all(round.map((r) => runApp(r, timeoutMs).catch((e: Error) => ({ answered: false, error: `agent: ${e.message}` }) as AppResult)));
  await new Promise((res) => setTimeout(res, settleMs));
  const t2 = Date.now();
  let [hostAfter, cfAfter] = await snapshot();
  if (process.env.CACL_EXCHANGE_DEBUG) process.stderr.write(`  snapshot ${t1 - t0} ms, apps ${t2 - t1} ms, snapshot ${Date.now() - t2} ms\n`);
  // Every destination answers what reaches it (the kernel for TCP handshakes and pings, the host
  // agent for UDP, the raw agent for other protocols), and a flow's packets are either all dropped
  // or all delivered. A request that arrived but is not answered yet, or a flow with only some of
  // its packets arrived, means packets or a slow agent still on their way on a busy machine, not a
  // verdict: give them once more time before the counters are final.
  const unanswered = round.some((r) => {
    const fi = hosts.indexOf(r.from);
    const ti = hosts.indexOf(r.to);
    const p = hasPorts(r);
    const fwd = p ? [r.src, r.dst, r.ipProto, r.srcPort, r.dstPort] : [r.src, r.dst, r.ipProto];
    const rev = p ? [r.dst, r.src, r.ipProto, r.dstPort, r.srcPort] : [r.dst, r.src, r.ipProto];
    const suffix = `${r.family}${p ? 'p' : 'n'}`;
    const d = (i: number, set: string, parts: unknown[]) => delta(hostBefore[i], hostAfter[i], `${set}|${parts.map(String).join('|')}`);
    const [sent, delivered, answered, replied] = [d(fi, `out${suffix}`, fwd), d(ti, `in${suffix}`, fwd), d(ti, `out${suffix}`, rev), d(fi, `in${suffix}`, rev)];
    return (delivered > 0 && answered === 0) || (delivered > 0 && delivered < sent) || (replied > 0 && replied < answered);
  });
  if (unanswered) {
    await new Promise((res) => setTimeout(res, graceMs));
    [hostAfter, cfAfter] = await snapshot();
  }
  await Promise.all([
    ...[...listens.values()].map((l) => l.host.agent.request('tunlisten', { port: l.port }, 5_000)),
    ...[...binds.values()].map((b) => b.host.agent.request('uunbind', { address: b.address, port: b.port }, 5_000)),
  ]);

  const out = new Map<Resolved, ExchangeResult | 'retry'>();
  const pairUse = new Map<string, number>();
  for (const r of round) {
    const key = `${[r.src, r.dst].sort().join('~')}|${r.ipProto}`;
    pairUse.set(key, (pairUse.get(key) ?? 0) + 1);
  }
  round.forEach((r, i) => {
    const app = apps[i];
    const code = app.error?.split(' ')[0];
    if (code && LOCAL_ERRORS.has(code)) {
      r.attempts++;
      out.set(r, 'retry');
      return;
    }
    if (app.error?.startsWith('agent:')) throw new Error(`exchange ${r.proto} ${r.src} → ${r.dst}: ${app.error}`);
    countProbe(r.proto === 'raw' ? 'raw' : r.proto);
    const fi = hosts.indexOf(r.from);
    const ti = hosts.indexOf(r.to);
    const p = hasPorts(r);
    const fwd = p ? [r.src, r.dst, r.ipProto, r.srcPort, r.dstPort] : [r.src, r.dst, r.ipProto];
    const rev = p ? [r.dst, r.src, r.ipProto, r.dstPort, r.srcPort] : [r.dst, r.src, r.ipProto];
    const k = (parts: unknown[]) => parts.map((x) => String(x)).join('|');
    const suffix = `${r.family}${p ? 'p' : 'n'}`;
    const hd = (i2: number, set: string, parts: unknown[]) => delta(hostBefore[i2], hostAfter[i2], `${set}|${k(parts)}`);
    const ttlSet = [`ttl${r.family}`];
    const pairKey = `${[r.src, r.dst].sort().join('~')}|${r.ipProto}`;
    const cfSet = `${p ? 'flows' : 'addrs'}${r.family}`;
    out.set(r, {
      label: r.spec.label,
      from: r.from.name,
      to: r.to.name,
      proto: r.proto,
      ipProto: r.ipProto,
      family: r.family,
      src: r.src,
      dst: r.dst,
      ...(p ? { srcPort: r.srcPort, dstPort: r.dstPort } : {}),
      sent: hd(fi, `out${suffix}`, fwd),
      delivered: hd(ti, `in${suffix}`, fwd),
      answered: hd(ti, `out${suffix}`, rev),
      replied: hd(fi, `in${suffix}`, rev),
      tunnel: cfBefore && cfAfter ? { forward: delta(cfBefore, cfAfter, `${cfSet}|${k(fwd)}`), reverse: delta(cfBefore, cfAfter, `${cfSet}|${k(rev)}`) } : undefined,
      ttl: {
        forward: ttlsGrown(hostBefore[ti], hostAfter[ti], ttlSet, k(fwd.slice(0, 3))),
        reverse: ttlsGrown(hostBefore[fi], hostAfter[fi], ttlSet, k(rev.slice(0, 3))),
        ...((pairUse.get(pairKey) ?? 0) > 1 ? { ambiguous: true } : {}),
      },
      answeredApp: app.answered,
      ...(r.proto === 'tcp' ? { connected: app.connected } : {}),
      ...(app.error ? { error: app.error } : {}),
      round: roundNo,
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Absolute packet counts of one flow (for continuous flows: streams, trains, repeated attempts)

export interface FlowTuple {
  ipProto: number;
  family: Family;
  src: string;
  dst: string;
  /** TCP/UDP source port; undefined = any (sums over every source port, e.g. repeated attempts). */
  srcPort?: number;
  /** TCP/UDP destination port; undefined = any. */
  dstPort?: number;
}

export interface FlowPackets {
  sent: number;
  delivered: number;
  answered: number;
  replied: number;
  tunnel?: { forward: number; reverse: number };
}

function sumMatching(counts: Counts, set: string, parts: (string | number | undefined)[]): number {
  let n = 0;
  for (const [k, v] of counts) {
    const [name, ...rest] = k.split('|');
    if (name !== set || rest.length !== parts.length) continue;
    if (parts.every((p, i) => p === undefined || String(p) === rest[i])) n += v;
  }
  return n;
}

/** Packets of a flow counted so far at both ends and in the tunnel (not deltas: totals since the site was built). */
export async function flowPackets(from: Host, to: Host, t: FlowTuple): Promise<FlowPackets> {
  const site = from.site;
  const [f, d, cf] = await Promise.all([
    readTable(site, from.ns, HOST_COUNT_TABLE),
    readTable(site, to.ns, HOST_COUNT_TABLE),
    site.cloudflare ? readTable(site, site.cloudflare, TUNNEL_COUNT_TABLE) : Promise.resolve(undefined),
  ]);
  const p = t.ipProto === 6 || t.ipProto === 17;
  const src = canonicalAddress(t.src);
  const dst = canonicalAddress(t.dst);
  const fwd = p ? [src, dst, t.ipProto, t.srcPort, t.dstPort] : [src, dst, t.ipProto];
  const rev = p ? [dst, src, t.ipProto, t.dstPort, t.srcPort] : [dst, src, t.ipProto];
  const suffix = `${t.family}${p ? 'p' : 'n'}`;
  const cfSet = `${p ? 'flows' : 'addrs'}${t.family}`;
  return {
    sent: sumMatching(f, `out${suffix}`, fwd),
    delivered: sumMatching(d, `in${suffix}`, fwd),
    answered: sumMatching(d, `out${suffix}`, rev),
    replied: sumMatching(f, `in${suffix}`, rev),
    tunnel: cf ? { forward: sumMatching(cf, cfSet, fwd), reverse: sumMatching(cf, cfSet, rev) } : undefined,
  };
}
