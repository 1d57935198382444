// Addresses and prefixes as integer ranges, the form the compiler and the evaluator reason in.
import ipaddr from 'ipaddr.js';

export type Family = 4 | 6;

export interface AddressRange {
  family: Family;
  /** Canonical text as written back to nft and shown to people (`198.18.1.0/24`, `2001:db8::5`). */
  text: string;
  first: bigint;
  last: bigint;
}

export const familyBits = (f: Family): number => (f === 4 ? 32 : 128);
export const familyMax = (f: Family): bigint => (1n << BigInt(familyBits(f))) - 1n;

export function anyAddress(family: Family): AddressRange {
  return { family, text: family === 4 ? '0.0.0.0/0' : '::/0', first: 0n, last: familyMax(family) };
}

function bytesToBigint(bytes: number[]): bigint {
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

export function addressToBigint(addr: ipaddr.IPv4 | ipaddr.IPv6): bigint {
  return bytesToBigint(addr.toByteArray());
}

export function bigintToAddress(value: bigint, family: Family): string {
  const n = family === 4 ? 4 : 16;
  const bytes: number[] = new Array(n);
  let v = value;
  for (let i = n - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return ipaddr.fromByteArray(bytes).toString();
}

export type ParsedSubnet =
  | { ok: true; range: AddressRange; hostBitsSet: boolean }
  | { ok: false; reason: string };

/** Parses an address (a single host) or a CIDR prefix. */
export function parseSubnet(input: string): ParsedSubnet {
  const text = input.trim();
  try {
    if (text.includes('/')) {
      if (!ipaddr.isValidCIDR(text)) return { ok: false, reason: `"${input}" is not an IPv4 or IPv6 prefix` };
      const [addr, len] = ipaddr.parseCIDR(text);
      const family: Family = addr.kind() === 'ipv4' ? 4 : 6;
      // ipaddr.js reads "010.0.0.0" as octal (8.0.0.0), "10/8" as 0.0.0.10 and "10.1/16" as 10.0.0.1.
      if (family === 4 && !ipaddr.IPv4.isValidFourPartDecimal(text.slice(0, text.indexOf('/')))) {
        return { ok: false, reason: `"${input}" is not a dotted-quad IPv4 prefix` };
      }
      const bits = familyBits(family);
      const value = addressToBigint(addr);
      const hostMask = (1n << BigInt(bits - len)) - 1n;
      const first = value & ~hostMask & familyMax(family);
      const last = first | hostMask;
      const canonical = len === bits ? bigintToAddress(first, family) : `${bigintToAddress(first, family)}/${len}`;
      return { ok: true, range: { family, text: canonical, first, last }, hostBitsSet: (value & hostMask) !== 0n };
    }
    if (!ipaddr.isValid(text)) return { ok: false, reason: `"${input}" is not an IPv4 or IPv6 address` };
    let addr = ipaddr.parse(text);
    // An IPv4-mapped IPv6 address is still IPv6 on the wire; keep it as written.
    const family: Family = addr.kind() === 'ipv4' ? 4 : 6;
    if (family === 4 && !ipaddr.IPv4.isValidFourPartDecimal(text)) {
      return { ok: false, reason: `"${input}" is not a dotted-quad IPv4 address` };
    }
    const value = addressToBigint(addr);
    addr = ipaddr.fromByteArray(addr.toByteArray());
    return { ok: true, range: { family, text: addr.toString(), first: value, last: value }, hostBitsSet: false };
  } catch {
    return { ok: false, reason: `"${input}" is not an IPv4 or IPv6 address or prefix` };
  }
}

export const rangeContains = (outer: AddressRange, inner: AddressRange): boolean =>
  outer.family === inner.family && outer.first <= inner.first && inner.last <= outer.last;

/**
 * Splits an arbitrary [first, last] address range into the fewest CIDR blocks, or returns
 * a single `a-b` range. nft accepts both inside interval sets; prefixes read better.
 */
export function rangeToNft(first: bigint, last: bigint, family: Family): string {
  const bits = familyBits(family);
  if (first === last) return bigintToAddress(first, family);
  const size = last - first + 1n;
  // A prefix when size is a power of two and first is aligned to it.
  if ((size & (size - 1n)) === 0n && (first & (size - 1n)) === 0n) {
    let len = bits;
    for (let s = size; s > 1n; s >>= 1n) len--;
    return `${bigintToAddress(first, family)}/${len}`;
  }
  return `${bigintToAddress(first, family)}-${bigintToAddress(last, family)}`;
}
