// Small typed readers for untrusted documents: each reports a precise problem and returns undefined.
import { parseSubnet, type AddressRange } from './address.js';
import type { ProblemSink } from './problems.js';

export type Doc = Record<string, unknown>;

export const isObject = (v: unknown): v is Doc => typeof v === 'object' && v !== null && !Array.isArray(v);

export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  return `${typeof v} ${JSON.stringify(v)}`;
}

export function warnUnknownKeys(doc: Doc, known: readonly string[], prefix: string, sink: ProblemSink): void {
  for (const key of Object.keys(doc)) {
    if (!known.includes(key)) sink.warn(join(prefix, key), 'unknown field, ignored');
  }
}

export const join = (prefix: string, key: string | number): string =>
  typeof key === 'number' ? `${prefix}[${key}]` : prefix ? `${prefix}.${key}` : key;

export function readString(doc: Doc, key: string, path: string, sink: ProblemSink, required = false): string | undefined {
  const v = doc[key];
  if (v === undefined || v === null) {
    if (required) sink.error(join(path, key), 'is required');
    return undefined;
  }
  if (typeof v !== 'string') {
    sink.error(join(path, key), `must be a string, not ${typeName(v)}`);
    return undefined;
  }
  if (required && v.trim() === '') {
    sink.error(join(path, key), 'must not be empty');
    return undefined;
  }
  return v;
}

export function readBoolean(doc: Doc, key: string, path: string, sink: ProblemSink, fallback: boolean): boolean {
  const v = doc[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') {
    sink.error(join(path, key), `must be true or false, not ${typeName(v)}`);
    return fallback;
  }
  return v;
}

/** Integers written as numbers or as strings (`"0x0cf00000"`, `"207"`). */
export function readInteger(
  doc: Doc, key: string, path: string, sink: ProblemSink, min: number, max: number,
): number | undefined {
  const v = doc[key];
  if (v === undefined || v === null) return undefined;
  let n: number;
  if (typeof v === 'number' && Number.isInteger(v)) n = v;
  else if (typeof v === 'string' && /^(0x[0-9a-f]+|\d+)$/i.test(v.trim())) n = Number(v.trim());
  else {
    sink.error(join(path, key), `must be an integer, not ${typeName(v)}`);
    return undefined;
  }
  if (!Number.isInteger(n) || n < min || n > max) {
    sink.error(join(path, key), `${v} is out of range (${min}–${max})`);
    return undefined;
  }
  return n;
}

export function readList(doc: Doc, key: string, path: string, sink: ProblemSink): unknown[] | undefined {
  const v = doc[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) {
    sink.error(join(path, key), `must be a list, not ${typeName(v)}`);
    return undefined;
  }
  return v;
}

/** A list of addresses or prefixes: each parsed, host bits warned about, with its field path. */
export function readSubnets(doc: Doc, path: string, sink: ProblemSink): { range: AddressRange; at: string }[] {
  const out: { range: AddressRange; at: string }[] = [];
  readList(doc, 'subnets', path, sink)?.forEach((s, i) => {
    const at = join(join(path, 'subnets'), i);
    if (typeof s !== 'string') return sink.error(at, `must be an address or prefix string, not ${typeName(s)}`);
    const parsed = parseSubnet(s);
    if (!parsed.ok) return sink.error(at, parsed.reason);
    if (parsed.hostBitsSet) sink.warn(at, `"${s}" has host bits set; it is read as ${parsed.range.text}`);
    out.push({ range: parsed.range, at });
  });
  return out;
}
