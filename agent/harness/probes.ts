// Probes: real packets between the namespaces of a Site, each returning facts.
//
//   tcpProbe   → connected (handshake done), roundTrip (our data echoed back), delivered (the server got it)
//   udpProbe   → delivered (the datagram reached the listener), replied (the listener's reply reached us)
//   icmpProbe  → delivered (echo request counted in the destination's input), replied (ping got its reply)
//
// Each result also says how many of its packets crossed the tunnel, per direction, from the
// counters in the Cloudflare namespace (keyed by 5-tuple, or address pair for ICMP), so probes
// may run concurrently. Expected drops cost one timeout (default 1 s).
import { canonicalAddress, TUNNEL_COUNT_TABLE, HOST_COUNT_TABLE, type Host, type Site } from './site.js';
import { countProbe } from './stats.js';

export type Family = 4 | 6;

export interface ProbeOptions {
  family?: Family;
  /** Client source port (TCP/UDP); default a fresh port from the site. */
  srcPort?: number;
  /** How long to wait for the handshake / the reply (default 1000 ms). */
  timeoutMs?: number;
}

export interface TunnelCrossing {
  /** Packets of this probe that crossed the tunnel from `from` toward `to`. */
  forward: number;
  /** Packets that crossed it the other way (replies). */
  reverse: number;
}

interface ProbeBase {
  from: string;
  to: string;
  src: string;
  dst: string;
  family: Family;
  /** Undefined when the site has no tunnel. */
  tunnel?: TunnelCrossing;
  ms: number;
  error?: string;
}

export interface TcpProbeResult extends ProbeBase {
  proto: 'tcp';
  srcPort: number;
  port: number;
  connected: boolean;
  roundTrip: boolean;
  delivered: boolean;
}

export interface UdpProbeResult extends ProbeBase {
  proto: 'udp';
  srcPort: number;
  port: number;
  delivered: boolean;
  replied: boolean;
}

export interface IcmpProbeResult extends ProbeBase {
  proto: 'icmp';
  delivered: boolean;
  replied: boolean;
}

export type ProbeResult = TcpProbeResult | UdpProbeResult | IcmpProbeResult;

const DEFAULT_TIMEOUT = 1_000;

// ---------------------------------------------------------------------------------------------
// Counters

type Counts = Map<string, number>;

const PROTO_NAMES: Record<string, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'ipv6-icmp', icmpv6: 'ipv6-icmp' };
const protoName = (p: unknown): string => PROTO_NAMES[String(p)] ?? String(p);
const key = (parts: unknown[]): string => parts.map((p, i) => (i < 2 ? canonicalAddress(String(p)) : i === 2 ? protoName(p) : String(p))).join('|');

interface NftSetJson {
  set?: { name: string; elem?: { elem?: { val: unknown; counter?: { packets: number } } }[] };
}

/** Parses `nft -j list table|set` output into element key → packets, for sets with counters. */
export function setCounts(json: string): Counts {
  const counts: Counts = new Map();
  const doc = JSON.parse(json) as { nftables: NftSetJson[] };
  for (const item of doc.nftables) {
    for (const e of item.set?.elem ?? []) {
      if (!e.elem) continue;
      const val = e.elem.val as { concat?: unknown[] } | string;
      const parts = typeof val === 'object' && val !== null && Array.isArray(val.concat) ? val.concat : [val];
      counts.set(key(parts), e.elem.counter?.packets ?? 0);
    }
  }
  return counts;
}

/** Packet counts of everything that crossed the tunnel so far, by flow. Empty without a tunnel. */
export async function tunnelCounts(site: Site): Promise<Counts> {
  if (!site.cloudflare) return new Map();
  return setCounts(await site.nft(site.cloudflare, ['-j', 'list', 'table', 'inet', TUNNEL_COUNT_TABLE]));
}

/** Total packets forwarded by the Cloudflare namespace so far (everything that crossed the tunnel). */
export async function tunnelTotal(site: Site): Promise<number> {
  if (!site.cloudflare) return 0;
  const out = await site.nft(site.cloudflare, ['-j', 'list', 'counter', 'inet', TUNNEL_COUNT_TABLE, 'crossed']);
  const doc = JSON.parse(out) as { nftables: { counter?: { packets: number } }[] };
  return doc.nftables.find((x) => x.counter)?.counter?.packets ?? 0;
}

async function echoCounts(host: Host): Promise<Counts> {
  return setCounts(await host.site.nft(host.ns, ['-j', 'list', 'table', 'inet', HOST_COUNT_TABLE]));
}

const delta = (before: Counts, after: Counts, k: string): number => (after.get(k) ?? 0) - (before.get(k) ?? 0);

// ---------------------------------------------------------------------------------------------
// Probes

interface Endpoints {
  site: Site;
  family: Family;
  src: string;
  dst: string;
  timeoutMs: number;
}

function endpoints(from: Host, to: Host, options: ProbeOptions): Endpoints {
  if (from.site !== to.site) throw new Error('probe between hosts of different sites');
  const family = options.family ?? 4;
  return { site: from.site, family, src: from.address(family), dst: to.address(family), timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT };
}

interface ClientReply {
  connected?: boolean;
  roundTrip?: boolean;
  replied?: boolean;
  localPort: number | null;
  ms: number;
  error?: string;
  handle?: number;
}

const LOCAL_ERRORS = new Set(['EADDRINUSE', 'EADDRNOTAVAIL', 'EACCES', 'EINVAL', 'EBADF', 'ERR_SOCKET_BAD_PORT']);

/** Runs one client request, retrying with a new source port when an automatic one is taken. */
async function clientRequest(from: Host, op: string, args: Record<string, unknown>, options: ProbeOptions, timeoutMs: number): Promise<{ reply: ClientReply; srcPort: number }> {
  for (let attempt = 0; ; attempt++) {
    const srcPort = options.srcPort ?? from.site.nextPort();
    const reply = await from.agent.request<ClientReply>(op, { ...args, srcPort, timeoutMs }, 2 * timeoutMs + 5_000);
    if (reply.error === 'EADDRINUSE' && options.srcPort === undefined && attempt < 5) continue;
    // The client could not even send: that says nothing about the network, so it is no result.
    if (reply.error && LOCAL_ERRORS.has(reply.error)) {
      throw new Error(`${op} probe from ${from.name} (source port ${srcPort}) could not send: ${reply.error}`);
    }
    return { reply, srcPort };
  }
}

async function tokenSeen(to: Host, token: string): Promise<boolean> {
  const r = await to.agent.request<{ facts: unknown[] }>('seen', { token }, 5_000);
  return r.facts.length > 0;
}

function crossing(site: Site, before: Counts, after: Counts, fwd: unknown[], rev: unknown[]): TunnelCrossing | undefined {
  if (!site.cloudflare) return undefined;
  return { forward: delta(before, after, key(fwd)), reverse: delta(before, after, key(rev)) };
}

/** A TCP connection from `from` to `to`:port; the destination runs an echo server. */
export async function tcpProbe(from: Host, to: Host, port: number, options: ProbeOptions = {}): Promise<TcpProbeResult> {
  const e = endpoints(from, to, options);
  await to.agent.listen('tcp', port);
  const token = e.site.nextToken();
  const before = await tunnelCounts(e.site);
  const { reply, srcPort } = await clientRequest(from, 'tcp', { host: e.dst, port, token }, options, e.timeoutMs);
  countProbe('tcp');
  const after = await tunnelCounts(e.site);
  return {
    proto: 'tcp', from: from.name, to: to.name, src: e.src, dst: e.dst, family: e.family, srcPort, port,
    connected: reply.connected === true,
    roundTrip: reply.roundTrip === true,
    delivered: await tokenSeen(to, token),
    tunnel: crossing(e.site, before, after, [e.src, e.dst, 'tcp', srcPort, port], [e.dst, e.src, 'tcp', port, srcPort]),
    ms: reply.ms,
    error: reply.error,
  };
}

/** One UDP datagram from `from` to `to`:port; the destination's listener records it and replies. */
export async function udpProbe(from: Host, to: Host, port: number, options: ProbeOptions = {}): Promise<UdpProbeResult> {
  const e = endpoints(from, to, options);
  await to.agent.listen('udp', port);
  const token = e.site.nextToken();
  const before = await tunnelCounts(e.site);
  const { reply, srcPort } = await clientRequest(from, 'udp', { host: e.dst, port, token }, options, e.timeoutMs);
  countProbe('udp');
  const after = await tunnelCounts(e.site);
  return {
    proto: 'udp', from: from.name, to: to.name, src: e.src, dst: e.dst, family: e.family, srcPort, port,
    delivered: await tokenSeen(to, token),
    replied: reply.replied === true,
    tunnel: crossing(e.site, before, after, [e.src, e.dst, 'udp', srcPort, port], [e.dst, e.src, 'udp', port, srcPort]),
    ms: reply.ms,
    error: reply.error,
  };
}

/** One ICMP echo (`ping -c1`). Probes between the same two hosts run one at a time. */
export async function icmpProbe(from: Host, to: Host, options: Omit<ProbeOptions, 'srcPort'> = {}): Promise<IcmpProbeResult> {
  const e = endpoints(from, to, options);
  const icmp = e.family === 4 ? 'icmp' : 'ipv6-icmp';
  const pair = [e.src, e.dst].sort().join('|');
  return e.site.withLock(`icmp|${pair}`, async () => {
    const [tBefore, dBefore] = await Promise.all([tunnelCounts(e.site), echoCounts(to)]);
    const started = Date.now();
    const seconds = (e.timeoutMs / 1000).toFixed(3);
    const r = await e.site.exec(from.ns, ['ping', `-${e.family}`, '-n', '-q', '-c', '1', '-W', seconds, e.dst], { timeoutMs: e.timeoutMs + 5_000 });
    const ms = Date.now() - started;
    countProbe('icmp');
    const [tAfter, dAfter] = await Promise.all([tunnelCounts(e.site), echoCounts(to)]);
    return {
      proto: 'icmp' as const, from: from.name, to: to.name, src: e.src, dst: e.dst, family: e.family,
      delivered: delta(dBefore, dAfter, key([e.src])) > 0,
      replied: r.code === 0,
      tunnel: crossing(e.site, tBefore, tAfter, [e.src, e.dst, icmp], [e.dst, e.src, icmp]),
      ms,
      error: r.code === 0 || r.code === 1 ? undefined : `ping exit ${r.code}: ${r.stderr.trim()}`,
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Long-lived TCP connections (for "a re-apply cuts established flows")

export interface TcpSendResult {
  /** Our line came back on the same connection. */
  roundTrip: boolean;
  /** The server received it. */
  delivered: boolean;
  tunnel?: TunnelCrossing;
  ms: number;
}

export interface TcpSession {
  readonly from: Host;
  readonly to: Host;
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly port: number;
  /** The opening handshake and first round trip (connected/roundTrip false = no session). */
  readonly opened: TcpProbeResult;
  /** Sends one line on the open connection and waits for its echo. */
  send(timeoutMs?: number): Promise<TcpSendResult>;
  close(): Promise<void>;
}

/** Opens a TCP connection and keeps it open. Check `opened.roundTrip` before using `send`. */
export async function tcpSession(from: Host, to: Host, port: number, options: ProbeOptions = {}): Promise<TcpSession> {
  const e = endpoints(from, to, options);
  await to.agent.listen('tcp', port);
  const token = e.site.nextToken();
  const before = await tunnelCounts(e.site);
  const { reply, srcPort } = await clientRequest(from, 'open', { host: e.dst, port, token }, options, e.timeoutMs);
  countProbe('tcp');
  const after = await tunnelCounts(e.site);
  const fwd = [e.src, e.dst, 'tcp', srcPort, port];
  const rev = [e.dst, e.src, 'tcp', port, srcPort];
  const opened: TcpProbeResult = {
    proto: 'tcp', from: from.name, to: to.name, src: e.src, dst: e.dst, family: e.family, srcPort, port,
    connected: reply.connected === true,
    roundTrip: reply.roundTrip === true,
    delivered: await tokenSeen(to, token),
    tunnel: crossing(e.site, before, after, fwd, rev),
    ms: reply.ms,
    error: reply.error,
  };
  const handle = reply.handle;
  return {
    from, to, src: e.src, dst: e.dst, srcPort, port, opened,
    async send(timeoutMs = e.timeoutMs): Promise<TcpSendResult> {
      if (handle === undefined) return { roundTrip: false, delivered: false, ms: 0 };
      const t = e.site.nextToken();
      const b = await tunnelCounts(e.site);
      const r = await from.agent.request<{ roundTrip: boolean; ms: number }>('send', { handle, token: t, timeoutMs }, timeoutMs + 5_000);
      countProbe('tcp');
      const a = await tunnelCounts(e.site);
      return { roundTrip: r.roundTrip, delivered: await tokenSeen(to, t), tunnel: crossing(e.site, b, a, fwd, rev), ms: r.ms };
    },
    async close(): Promise<void> {
      if (handle !== undefined) await from.agent.request('close', { handle }, 5_000).catch(() => undefined);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Words for tables

export type Seen = 'passed' | 'dropped' | 'refused' | 'one-way' | 'reply dropped';

/**
 * What a probe showed, in one word: `passed` (answered), `dropped` (nothing arrived),
 * `one-way` (UDP/ICMP delivered but the reply was dropped), `refused` (TCP RST: it arrived, no listener).
 */
export function seenOf(r: ProbeResult): Seen {
  if (r.proto === 'tcp') {
    if (r.roundTrip) return 'passed';
    if (r.error === 'ECONNREFUSED') return 'refused';
    return r.connected ? 'reply dropped' : 'dropped';
  }
  if (r.replied) return 'passed';
  return r.delivered ? 'one-way' : 'dropped';
}

/** True when packets went through the tunnel in both directions (or forward only, for one-way). */
export const crossedTunnel = (r: ProbeResult | TcpSendResult): boolean => (r.tunnel?.forward ?? 0) > 0;

export function describeProbe(r: ProbeResult): string {
  const ports = r.proto === 'icmp' ? '' : ` ${r.srcPort}→${r.port}`;
  const tunnel = r.tunnel ? ` tunnel ${r.tunnel.forward}/${r.tunnel.reverse}` : '';
  const facts = r.proto === 'tcp'
    ? `connected=${r.connected} roundTrip=${r.roundTrip} delivered=${r.delivered}`
    : `delivered=${r.delivered} replied=${r.replied}`;
  return `${r.proto}/v${r.family} ${r.from}(${r.src}) → ${r.to}(${r.dst})${ports}: ${facts}${tunnel}${r.error ? ` (${r.error})` : ''} [${r.ms} ms]`;
}
