// Cloudflare ACL objects (the API's own field names) → validated policies.
import { rangeContains, type AddressRange } from './address.js';
import { isObject, join, readBoolean, readList, readString, readSubnets, typeName, warnUnknownKeys, type Doc } from './fields.js';
import { canonicalJson, sha256Hex } from './hash.js';
import { PROTOCOLS, type Endpoint, type Lan, type Policy, type PortRange, type Protocol, type Site } from './model.js';
import { ProblemSink, type Problem } from './problems.js';
import { LAN_ID } from './site.js';

const ACL_KEYS = ['id', 'name', 'description', 'lan_1', 'lan_2', 'protocols', 'unidirectional', 'forward_locally'] as const;
const ENDPOINT_KEYS = ['lan_id', 'lan_name', 'ports', 'port_ranges', 'subnets'] as const;
/** Policy ids become parts of nft object names, so they keep to nft's identifier characters. */
export const POLICY_ID = LAN_ID;

/** One input document: its file name and its parsed content. */
export interface PolicyDocument {
  file: string;
  content: unknown;
}

export interface PolicyResult {
  policies: Policy[];
  problems: Problem[];
}

/** Accepts a list of ACL objects or a saved API response envelope (`{"result": [...]}`). */
export function extractAcls(doc: PolicyDocument, sink: ProblemSink): unknown[] {
  const c = doc.content;
  if (c === null || c === undefined) return []; // an empty file is an empty list
  if (Array.isArray(c)) return c;
  if (isObject(c) && 'result' in c) {
    if (c.success === false) {
      const errs = Array.isArray(c.errors) ? c.errors.map((e) => (isObject(e) ? e.message : e)).join('; ') : '';
      sink.error(undefined, `saved API response has "success": false${errs ? ` (${errs})` : ''}`);
      return [];
    }
    if (Array.isArray(c.result)) return c.result;
    if (isObject(c.result)) return [c.result]; // a single-object response (create/get)
    if (c.result === null) return [];
    sink.error('result', `must be a list of ACL objects, not ${typeName(c.result)}`);
    return [];
  }
  if (isObject(c) && 'lan_1' in c) return [c]; // a single ACL object
  sink.error(undefined, `expected a list of ACL objects or an API response with "result", not ${typeName(c)}`);
  return [];
}

export function parsePolicies(docs: readonly PolicyDocument[], site: Site): PolicyResult {
  const root = new ProblemSink();
  const policies: Policy[] = [];
  const firstSeen = new Map<string, Policy>();
  for (const doc of docs) {
    const fileSink = root.scoped({ file: doc.file });
    extractAcls(doc, fileSink).forEach((raw, index) => {
      const policy = parseAcl(raw, index, doc.file, site, fileSink);
      if (!policy) return;
      const earlier = firstSeen.get(policy.id);
      if (earlier) {
        const sink = fileSink.scoped({ policy: { name: policy.name, id: policy.id } });
        if (isObject(raw) && typeof raw.id === 'string') {
          sink.error('id', `duplicate id: also used by policy "${earlier.name}" in ${earlier.source.file}`);
        } else {
          sink.error(undefined, `duplicate: the same content as policy "${earlier.name}" in ${earlier.source.file} (an ACL without id gets an id derived from its content)`);
        }
        return;
      }
      firstSeen.set(policy.id, policy);
      policies.push(policy);
    });
  }
  return { policies, problems: root.problems };
}

function parseAcl(raw: unknown, index: number, file: string, site: Site, fileSink: ProblemSink): Policy | undefined {
  if (!isObject(raw)) {
    fileSink.error(`[${index}]`, `an ACL must be a mapping, not ${typeName(raw)}`);
    return undefined;
  }
  const rawName = typeof raw.name === 'string' ? raw.name : undefined;
  const rawId = typeof raw.id === 'string' ? raw.id : undefined;
  const id = rawId ?? derivedId(raw);
  const sink = fileSink.scoped({ policy: { name: rawName ?? `#${index + 1}`, id } });
  const errorsBefore = countErrors(sink);

  warnUnknownKeys(raw, ACL_KEYS, '', sink);
  readString(raw, 'id', '', sink);
  if (rawId !== undefined && !POLICY_ID.test(rawId)) {
    sink.error('id', `"${rawId}" is not a valid id (letters, digits, _ and -, up to 64 characters)`);
  }
  const name = readString(raw, 'name', '', sink) ?? id;
  const description = readString(raw, 'description', '', sink) ?? '';
  const protocols = parseProtocols(raw, sink);
  const unidirectional = readBoolean(raw, 'unidirectional', '', sink, false);
  const forwardLocally = readBoolean(raw, 'forward_locally', '', sink, false);

  const origin = parseEndpoint(raw, 'lan_1', site, sink);
  const destination = parseEndpoint(raw, 'lan_2', site, sink);
  if (origin && destination && origin.lanId === destination.lanId) {
    sink.error('lan_2.lan_id', `origin and destination are the same LAN ("${origin.lanId}"); a policy links two different LANs`);
  }

  const all = protocols.length === 0;
  if (unidirectional && protocols.includes('tcp')) {
    sink.error('unidirectional', 'TCP can only be bidirectional: remove "tcp" from protocols or set unidirectional to false');
  } else if (unidirectional && all) {
    sink.warn('unidirectional', 'unidirectional with all protocols ("Any") will break TCP traffic: no reply can come back');
  }
  if (protocols.length > 0 && !protocols.includes('tcp') && !protocols.includes('udp')) {
    for (const side of ['lan_1', 'lan_2'] as const) {
      const ep = raw[side];
      for (const key of ['ports', 'port_ranges'] as const) {
        const given = isObject(ep) ? ep[key] : undefined;
        if ((Array.isArray(given) && given.length > 0) || (typeof given === 'string' && given.trim() !== '')) {
          sink.warn(join(side, key), 'ports do not apply: none of the chosen protocols (icmp) has ports');
        }
      }
    }
  }
  if (origin && destination) checkFamilies(origin, destination, sink);
  if (!forwardLocally && !site.tunnel) {
    sink.error('forward_locally', 'traffic is forwarded via Cloudflare (forward_locally is false), but the site config has no tunnel');
  }

  if (countErrors(sink) > errorsBefore || !origin || !destination) return undefined;
  const enforced = { origin: endpointKey(origin), destination: endpointKey(destination), protocols, unidirectional, forwardLocally };
  return {
    id, name, description, origin, destination, protocols, unidirectional, forwardLocally,
    source: { file, index },
    contentHash: sha256Hex(canonicalJson(enforced)).slice(0, 16),
  };
}

const countErrors = (sink: ProblemSink): number => sink.problems.filter((p) => p.severity === 'error').length;

/** Stable id for an ACL written without one: the same content always gets the same id. */
export function derivedId(raw: Doc): string {
  const { id: _ignored, ...rest } = raw;
  return sha256Hex(canonicalJson(rest)).slice(0, 32);
}

function parseProtocols(raw: Doc, sink: ProblemSink): Protocol[] {
  const list = readList(raw, 'protocols', '', sink);
  const out: Protocol[] = [];
  list?.forEach((p, i) => {
    const at = join('protocols', i);
    const name = typeof p === 'string' ? p.toLowerCase() : undefined;
    if (name === undefined || !(PROTOCOLS as readonly string[]).includes(name)) {
      sink.error(at, `${typeName(p)} is not a protocol: use tcp, udp or icmp (or leave protocols empty for all)`);
      return;
    }
    if (out.includes(name as Protocol)) sink.warn(at, `"${name}" is listed twice`);
    else out.push(name as Protocol);
  });
  return out.sort((a, b) => PROTOCOLS.indexOf(a) - PROTOCOLS.indexOf(b));
}

function parseEndpoint(raw: Doc, side: 'lan_1' | 'lan_2', site: Site, sink: ProblemSink): Endpoint | undefined {
  const v = raw[side];
  const role = side === 'lan_1' ? 'origin' : 'destination';
  if (v === undefined || v === null) {
    sink.error(side, `is required: the ${role} LAN`);
    return undefined;
  }
  if (!isObject(v)) {
    sink.error(side, `must be a mapping with lan_id, not ${typeName(v)}`);
    return undefined;
  }
  warnUnknownKeys(v, ENDPOINT_KEYS, side, sink);
  const lanId = readString(v, 'lan_id', side, sink, true);
  const lanName = readString(v, 'lan_name', side, sink);
  let lan: Lan | undefined;
  if (lanId !== undefined) {
    lan = site.lans.find((l) => l.id === lanId);
    if (!lan) {
      const known = site.lans.map((l) => `${l.id} (${l.name})`).join(', ') || 'none';
      sink.error(join(side, 'lan_id'), `"${lanId}" is not a LAN of this site (known: ${known})`);
    } else if (lanName !== undefined && lanName !== lan.name) {
      sink.warn(join(side, 'lan_name'), `"${lanName}" differs from the site config's name "${lan.name}" for this LAN`);
    }
  }
  const ports = parsePorts(v, side, sink);
  const subnets = parseEndpointSubnets(v, side, lan, sink);
  if (lanId === undefined || !lan) return undefined;
  return { lanId, subnets, ports: mergePortRanges(ports) };
}

function parsePorts(v: Doc, side: string, sink: ProblemSink): PortRange[] {
  const out: PortRange[] = [];
  const portsPath = join(side, 'ports');
  const ports = v.ports;
  if (typeof ports === 'string') {
    // The dashboard's form: "2,5,6,9-14".
    ports.split(',').map((s) => s.trim()).forEach((item, i) => {
      const at = join(portsPath, i);
      if (item === '') return sink.error(portsPath, `"${ports}": empty item in the port list`);
      const r = item.includes('-') ? parseRange(item, at, sink) : parsePort(Number(/^\d+$/.test(item) ? item : NaN), item, at, sink);
      if (r) out.push(r);
    });
  } else if (ports !== undefined && ports !== null) {
    readList(v, 'ports', side, sink)?.forEach((p, i) => {
      const r = parsePort(p, p, join(portsPath, i), sink);
      if (r) out.push(r);
    });
  }
  readList(v, 'port_ranges', side, sink)?.forEach((r, i) => {
    const at = join(join(side, 'port_ranges'), i);
    if (typeof r !== 'string') return sink.error(at, `must be a string "start-end", not ${typeName(r)}`);
    const range = parseRange(r, at, sink);
    if (range) out.push(range);
  });
  return out;
}

function parsePort(p: unknown, shown: unknown, at: string, sink: ProblemSink): PortRange | undefined {
  if (typeof p !== 'number' || !Number.isInteger(p)) {
    sink.error(at, `${typeName(shown)} is not a port number`);
    return undefined;
  }
  if (p < 1 || p > 65535) {
    sink.error(at, p === 0 ? '0 is not a valid port (valid ports are 1–65535)' : `${p} is out of range (valid ports are 1–65535)`);
    return undefined;
  }
  return { from: p, to: p };
}

function parseRange(text: string, at: string, sink: ProblemSink): PortRange | undefined {
  const m = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(text);
  if (!m) {
    sink.error(at, `"${text}" is not a port range: write "start-end", e.g. "8080-9000"`);
    return undefined;
  }
  const from = Number(m[1]);
  const to = Number(m[2]);
  if (from < 1 || to < 1 || from > 65535 || to > 65535) {
    sink.error(at, `"${text}": ports must be 1–65535`);
    return undefined;
  }
  if (from > to) {
    sink.error(at, `"${text}": range start is above its end`);
    return undefined;
  }
  return { from, to };
}

/** Sorted, overlapping and adjacent ranges joined: the canonical form hashes and compiles the same. */
export function mergePortRanges(ranges: PortRange[]): PortRange[] {
  const sorted = [...ranges].sort((a, b) => a.from - b.from || a.to - b.to);
  const out: PortRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.from <= last.to + 1) last.to = Math.max(last.to, r.to);
    else out.push({ ...r });
  }
  return out;
}

function parseEndpointSubnets(v: Doc, side: string, lan: Lan | undefined, sink: ProblemSink): AddressRange[] {
  const out: AddressRange[] = [];
  for (const { range, at } of readSubnets(v, side, sink)) {
    if (lan && lan.subnets.length > 0 && !lan.subnets.some((ls) => rangeContains(ls, range))) {
      sink.warn(at, `${range.text} is outside the subnets of LAN "${lan.name}" (${lan.subnets.map((x) => x.text).join(', ')})`);
    }
    if (out.some((o) => o.family === range.family && o.first === range.first && o.last === range.last)) {
      sink.warn(at, `${range.text} is listed twice`);
      continue;
    }
    out.push(range);
  }
  return out;
}

function checkFamilies(origin: Endpoint, destination: Endpoint, sink: ProblemSink): void {
  const fam = (ep: Endpoint) => new Set(ep.subnets.map((s) => s.family));
  const a = fam(origin);
  const b = fam(destination);
  if (a.size === 0 || b.size === 0) return;
  if (![...a].some((f) => b.has(f))) {
    sink.warn('lan_2.subnets', `the policy can never match: lan_1 subnets are IPv${[...a].join('/')} only and lan_2 subnets IPv${[...b].join('/')} only`);
  }
}

const endpointKey = (ep: Endpoint) => ({
  lan: ep.lanId,
  subnets: ep.subnets.map((s) => s.text).sort(),
  ports: ep.ports.map((p) => `${p.from}-${p.to}`),
});
