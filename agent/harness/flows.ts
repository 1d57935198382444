// Continuous flows for "nothing is lost while the ruleset changes": a TCP stream and a UDP train
// that carry sequence numbers (the receiver checks it got 0, 1, 2, … in order, the sender checks
// the echoes the same way), and repeated TCP connection attempts for a flow that must stay
// forbidden. Packet counts per flow come from flowPackets (exchange.ts).
import type { Family } from './probes.js';
import type { Host } from './site.js';
import { countProbe } from './stats.js';
import { flowPackets, type FlowPackets } from './exchange.js';

export interface SeqReport {
  /** Lines / datagrams received. */
  count: number;
  /** Received exactly as 0, 1, 2, … (nothing missing before the last one, nothing reordered). */
  inOrder: boolean;
  /** The first place where the order broke. */
  firstBad: { expected: number; got: number } | null;
  /** Highest sequence number received (-1: none). */
  max: number;
  /** Longest pause between two consecutive arrivals (ms). */
  maxGapMs: number;
}

export interface FlowReport {
  sent: number;
  /** What the destination received. */
  received: SeqReport;
  /** What came back to the source (echoes; none for noreply trains). */
  echoes: SeqReport;
  error?: string;
  /** TCP: the connection closed before the end. */
  closed?: boolean;
}

/** Every sequence number 0 … sent-1 arrived, once, in order. */
export const seqComplete = (r: SeqReport, sent: number): boolean => r.inOrder && r.count === sent && r.max === sent - 1;

export interface ContinuousSpec {
  from: Host;
  to: Host;
  port: number;
  family?: Family;
  srcPort?: number;
  /** One line/datagram every intervalMs (default 2 for streams, 5 for trains). */
  intervalMs?: number;
  /** Lines/datagrams per tick (default 1). */
  burst?: number;
  /** Padding per line/datagram (default 0). */
  payloadBytes?: number;
  /** UDP trains: the receiver does not echo. */
  noreply?: boolean;
}

export interface RunningFlow {
  readonly kind: 'stream' | 'train';
  readonly token: string;
  readonly family: Family;
  readonly src: string;
  readonly dst: string;
  readonly srcPort: number;
  readonly port: number;
  /** Stops sending, waits (up to drainMs) for the echoes; a stream's connection stays open. */
  stop(drainMs?: number): Promise<FlowReport>;
  /** Packet counters of this flow at both ends (and in the tunnel). */
  packets(): Promise<FlowPackets>;
  close(): Promise<void>;
}

async function start(kind: 'stream' | 'train', spec: ContinuousSpec): Promise<RunningFlow> {
  const family = spec.family ?? 4;
  const src = spec.from.address(family);
  const dst = spec.to.address(family);
  const proto = kind === 'stream' ? 'tcp' : 'udp';
  await spec.to.agent.listen(proto, spec.port);
  const site = spec.from.site;
  const token = site.nextToken();
  const srcPort = spec.srcPort ?? site.nextPort();
  const r = await spec.from.agent.request<{ connected?: boolean; handle?: number; error?: string; localPort?: number }>(kind, {
    host: dst, port: spec.port, srcPort, token, intervalMs: spec.intervalMs, burst: spec.burst,
    payloadBytes: spec.payloadBytes, noreply: spec.noreply, timeoutMs: 2_000,
  }, 10_000);
  if (r.handle === undefined) throw new Error(`${kind} ${src} → ${dst}:${spec.port} did not start: ${r.error ?? 'no connection'}`);
  countProbe(kind);
  const handle = r.handle;
  let closed = false;
  return {
    kind, token, family, src, dst, srcPort, port: spec.port,
    async stop(drainMs = 2_000): Promise<FlowReport> {
      const s = await spec.from.agent.request<{ sent: number; echoes: SeqReport; error?: string; closed?: boolean }>('flowStop', {
        handle, token, drainMs, noEcho: kind === 'train' && spec.noreply === true,
      }, drainMs + 10_000);
      const received = await spec.to.agent.request<SeqReport>('seqSeen', { token }, 5_000);
      if (kind === 'train') closed = true;
      return { sent: s.sent, received, echoes: s.echoes, ...(s.error ? { error: s.error } : {}), ...(kind === 'stream' ? { closed: s.closed } : {}) };
    },
    packets: () => flowPackets(spec.from, spec.to, { ipProto: proto === 'tcp' ? 6 : 17, family, src, dst, srcPort, dstPort: spec.port }),
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await spec.from.agent.request('flowClose', { handle }, 5_000).catch(() => undefined);
    },
  };
}

/** A TCP connection that writes a numbered line every intervalMs; the destination echoes each line. */
export const startTcpStream = (spec: ContinuousSpec): Promise<RunningFlow> => start('stream', spec);

/** A numbered UDP datagram every intervalMs from one socket (one conntrack flow); echoed unless noreply. */
export const startUdpTrain = (spec: ContinuousSpec): Promise<RunningFlow> => start('train', spec);

export interface RunningKnock {
  readonly family: Family;
  readonly src: string;
  readonly dst: string;
  readonly port: number;
  /** Stops; how many attempts were made and how many connected. */
  stop(): Promise<{ attempts: number; connected: number }>;
  /** Packets of every attempt (any source port) at both ends. */
  packets(): Promise<FlowPackets>;
}

/** A new TCP connection attempt to `to`:port every intervalMs (default 20), each abandoned after attemptMs (300). */
export async function startTcpKnock(spec: ContinuousSpec & { attemptMs?: number }): Promise<RunningKnock> {
  const family = spec.family ?? 4;
  const src = spec.from.address(family);
  const dst = spec.to.address(family);
  await spec.to.agent.listen('tcp', spec.port);
  const r = await spec.from.agent.request<{ handle: number }>('knock', { host: dst, port: spec.port, intervalMs: spec.intervalMs, attemptMs: spec.attemptMs }, 5_000);
  countProbe('knock');
  return {
    family, src, dst, port: spec.port,
    stop: () => spec.from.agent.request<{ attempts: number; connected: number }>('flowStop', { handle: r.handle }, 5_000),
    packets: () => flowPackets(spec.from, spec.to, { ipProto: 6, family, src, dst, dstPort: spec.port }),
  };
}
