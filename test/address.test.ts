// Addresses and prefixes (agent/policy/address.ts): what a subnet string means, and the nft text
// a range is written back as.
import t from 'tap';
import fc from 'fast-check';
import { bigintToAddress, familyMax, parseSubnet, rangeToNft, type Family } from '../agent/policy/address.js';

const parsed = (s: string) => {
  const p = parseSubnet(s);
  return p.ok ? { text: p.range.text, family: p.range.family, first: bigintToAddress(p.range.first, p.range.family), last: bigintToAddress(p.range.last, p.range.family), hostBitsSet: p.hostBitsSet } : p.reason;
};

t.test('hosts and prefixes', async (t) => {
  t.same(parsed('198.18.1.7'), { text: '198.18.1.7', family: 4, first: '198.18.1.7', last: '198.18.1.7', hostBitsSet: false });
  t.same(parsed('198.18.1.0/24'), { text: '198.18.1.0/24', family: 4, first: '198.18.1.0', last: '198.18.1.255', hostBitsSet: false });
  t.same(parsed('198.18.1.9/24'), { text: '198.18.1.0/24', family: 4, first: '198.18.1.0', last: '198.18.1.255', hostBitsSet: true });
  t.same(parsed('198.18.1.7/32'), { text: '198.18.1.7', family: 4, first: '198.18.1.7', last: '198.18.1.7', hostBitsSet: false }, '/32 is a host');
  t.same(parsed('0.0.0.0/0'), { text: '0.0.0.0/0', family: 4, first: '0.0.0.0', last: '255.255.255.255', hostBitsSet: false });
  t.same(parsed('2001:DB8:0:0::1'), { text: '2001:db8::1', family: 6, first: '2001:db8::1', last: '2001:db8::1', hostBitsSet: false }, 'canonical IPv6 text');
  t.same(parsed('2001:db8:1::/64'), { text: '2001:db8:1::/64', family: 6, first: '2001:db8:1::', last: '2001:db8:1:0:ffff:ffff:ffff:ffff', hostBitsSet: false });
  t.same(parsed(' 198.18.1.7 '), { text: '198.18.1.7', family: 4, first: '198.18.1.7', last: '198.18.1.7', hostBitsSet: false }, 'surrounding spaces');
  t.equal((parseSubnet('::ffff:198.18.1.7') as { range: { family: Family } }).range.family, 6, 'an IPv4-mapped address is IPv6 on the wire');
});

t.test('IPv4 must be dotted quads, also in prefixes (no octal, hex or short forms)', async (t) => {
  t.equal(parsed('010.0.0.0/8'), '"010.0.0.0/8" is not a dotted-quad IPv4 prefix', 'not silently 8.0.0.0/8');
  t.equal(parsed('10.0.0.010/32'), '"10.0.0.010/32" is not a dotted-quad IPv4 prefix', 'not silently 10.0.0.8');
  t.equal(parsed('0x0a.0.0.0/8'), '"0x0a.0.0.0/8" is not a dotted-quad IPv4 prefix');
  t.equal(parsed('10/8'), '"10/8" is not a dotted-quad IPv4 prefix', 'not silently 0.0.0.0/8');
  t.equal(parsed('10.1/16'), '"10.1/16" is not a dotted-quad IPv4 prefix', 'not silently 10.0.0.0/16');
  t.equal(parsed('010.0.0.1'), '"010.0.0.1" is not a dotted-quad IPv4 address');
  t.equal(parsed('10.1'), '"10.1" is not a dotted-quad IPv4 address');
});

t.test('invalid', async (t) => {
  t.equal(parsed('198.18.1.0/33'), '"198.18.1.0/33" is not an IPv4 or IPv6 prefix');
  t.equal(parsed('2001:db8::/129'), '"2001:db8::/129" is not an IPv4 or IPv6 prefix');
  t.equal(parsed('198.18.1.0/'), '"198.18.1.0/" is not an IPv4 or IPv6 prefix');
  t.equal(parsed('/24'), '"/24" is not an IPv4 or IPv6 prefix');
  t.equal(parsed('198.18.1.256'), '"198.18.1.256" is not an IPv4 or IPv6 address');
  t.equal(parsed('lan1'), '"lan1" is not an IPv4 or IPv6 address');
  t.equal(parsed(''), '"" is not an IPv4 or IPv6 address');
});

/** Reads rangeToNft's text back: an address, a prefix, or `a-b`. */
function readBack(text: string, family: Family): [bigint, bigint] {
  const dash = text.indexOf('-');
  if (dash > 0) {
    const [a, b] = [text.slice(0, dash), text.slice(dash + 1)].map((s) => parseSubnet(s));
    if (!a.ok || !b.ok) throw new Error(`bad range ${text}`);
    return [a.range.first, b.range.first];
  }
  const p = parseSubnet(text);
  if (!p.ok || p.range.family !== family || p.hostBitsSet) throw new Error(`bad text ${text}`);
  return [p.range.first, p.range.last];
}

t.test('rangeToNft writes exactly the range, as a prefix when it is one', async (t) => {
  for (const family of [4, 6] as const) {
    const max = familyMax(family);
    const edge = fc.oneof(
      fc.bigInt({ min: 0n, max }),
      fc.constantFrom(0n, 1n, max - 1n, max, 255n, 256n, 2n ** 24n, 2n ** 24n - 1n),
      fc.tuple(fc.bigInt({ min: 0n, max }), fc.integer({ min: 0, max: family === 4 ? 32 : 128 })).map(([v, bits]) => (v >> BigInt(bits)) << BigInt(bits)),
    );
    fc.assert(fc.property(edge, edge, (a, b) => {
      const [first, last] = a <= b ? [a, b] : [b, a];
      const text = rangeToNft(first, last, family);
      const [f, l] = readBack(text, family);
      if (f !== first || l !== last) throw new Error(`${first}-${last} written as ${text}`);
      const size = last - first + 1n;
      const isPrefix = (size & (size - 1n)) === 0n && (first & (size - 1n)) === 0n;
      if (isPrefix !== !text.includes('-')) throw new Error(`${text}: prefix ${isPrefix}`);
    }), { numRuns: 1000 });
  }
  t.equal(rangeToNft(0n, 2n ** 32n - 1n, 4), '0.0.0.0/0');
  t.equal(rangeToNft(0n, 2n ** 128n - 1n, 6), '::/0');
  t.equal(rangeToNft(10n, 10n, 4), '0.0.0.10');
  t.equal(rangeToNft(1n, 2n, 4), '0.0.0.1-0.0.0.2');
});
