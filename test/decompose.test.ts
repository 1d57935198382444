// Properties of the disjoint decomposition (agent/ir/decompose.ts) on random labelled boxes:
// the cells are pairwise disjoint, cover exactly the union of the boxes (checked on every
// boundary point and its neighbours, plus random points), and every cell carries the label
// the covering boxes dictate. Small coordinates make overlaps and shared edges frequent.
import t from 'tap';
import fc from 'fast-check';
import { decompose, overlaps, type Box, type Cell } from '../agent/ir/decompose.js';

const MAX = 15n;

const boxArb = (dims: number, labels: fc.Arbitrary<number>): fc.Arbitrary<Box> =>
  fc.tuple(
    fc.array(fc.tuple(fc.bigInt({ min: 0n, max: MAX }), fc.bigInt({ min: 0n, max: MAX })), { minLength: dims, maxLength: dims }),
    labels,
  ).map(([ranges, label]) => ({
    lo: ranges.map(([a, b]) => (a < b ? a : b)),
    hi: ranges.map(([a, b]) => (a < b ? b : a)),
    label,
  }));

/** Boxes with distinct labels (one policy = one box) or shared labels (one policy = several boxes). */
const inputArb = (shared: boolean) =>
  fc.integer({ min: 1, max: 5 }).chain((dims) =>
    fc.array(boxArb(dims, shared ? fc.nat({ max: 3 }) : fc.constant(0)), { minLength: 0, maxLength: 12 })
      .map((boxes) => (shared ? boxes : boxes.map((b, i) => ({ ...b, label: i })))));

const inside = (b: { lo: bigint[]; hi: bigint[] }, p: readonly bigint[]) => p.every((v, d) => b.lo[d] <= v && v <= b.hi[d]);

/** Points on and next to every edge of every box and cell, combined across dimensions. */
function samplePoints(boxes: readonly Box[], cells: readonly Cell[], rand: () => number): bigint[][] {
  const all = [...boxes, ...cells];
  if (all.length === 0) return [];
  const dims = all[0].lo.length;
  const perDim: bigint[][] = [];
  for (let d = 0; d < dims; d++) {
    const vals = new Set<bigint>();
    for (const b of all) for (const v of [b.lo[d] - 1n, b.lo[d], b.hi[d], b.hi[d] + 1n]) if (v >= 0n && v <= MAX) vals.add(v);
    perDim.push([...vals]);
  }
  const points: bigint[][] = [];
  // every corner of every box, each pushed one step outward too; the low and high corner of
  // every cell and their outward neighbours
  for (const b of boxes) {
    for (let mask = 0; mask < 1 << dims; mask++) {
      const corner = b.lo.map((lo, d) => ((mask >> d) & 1 ? b.hi[d] : lo));
      points.push(corner, corner.map((v, d) => ((mask >> d) & 1 ? v + 1n : v - 1n)));
    }
  }
  for (const c of cells) points.push(c.lo, c.hi, c.lo.map((v) => v - 1n), c.hi.map((v) => v + 1n));
  // random combinations of the boundary values
  for (let i = 0; i < 200; i++) points.push(perDim.map((vals) => vals[Math.floor(rand() * vals.length)]));
  return points;
}

/** A deterministic PRNG, so a failing fast-check run replays exactly. */
function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const fmt = (b: { lo: bigint[]; hi: bigint[]; label: number }) =>
  `[${b.lo.map((lo, d) => `${lo}-${b.hi[d]}`).join(' . ')}]#${b.label}`;

function checkCells(
  boxes: Box[], seed: number, expectLabel: (covering: number[]) => number, rank?: (label: number) => number,
): string | undefined {
  const cells = decompose(boxes, rank);
  for (const c of cells) if (c.lo.some((lo, d) => lo > c.hi[d])) return `empty cell ${fmt(c)}`;
  for (let i = 0; i < cells.length; i++) {
    for (let j = i + 1; j < cells.length; j++) if (overlaps(cells[i], cells[j])) return `cells overlap: ${fmt(cells[i])} and ${fmt(cells[j])}`;
  }
  for (const p of samplePoints(boxes, cells, mulberry(seed))) {
    if (p.some((v) => v < 0n || v > MAX)) continue;
    const covering = boxes.filter((b) => inside(b, p)).map((b) => b.label);
    const hits = cells.filter((c) => inside(c, p));
    if (covering.length > 0 && hits.length === 0) return `point ${p.join(',')} is in a box but in no cell`;
    if (covering.length === 0 && hits.length > 0) return `point ${p.join(',')} is in cell ${fmt(hits[0])} but in no box`;
    if (hits.length > 1) return `point ${p.join(',')} is in ${hits.length} cells`;
    if (hits.length === 1 && hits[0].label !== expectLabel(covering)) {
      return `point ${p.join(',')}: cell ${fmt(hits[0])} is labelled ${hits[0].label}, covering labels are ${covering.join(',')}`;
    }
  }
  return undefined;
}

const minLabel = (labels: number[]) => Math.min(...labels);

t.test('cells are disjoint, cover exactly the union, labelled by the lowest covering label', async (t) => {
  fc.assert(fc.property(inputArb(false), fc.nat(), (boxes, seed) => {
    const problem = checkCells(boxes, seed, minLabel);
    if (problem) throw new Error(`${problem}\nboxes: ${boxes.map(fmt).join(' ')}`);
  }), { numRuns: 400 });
  t.pass('400 random box sets');
});

t.test('each cell lies inside the box whose label it carries (distinct labels)', async (t) => {
  fc.assert(fc.property(inputArb(false), (boxes) => {
    for (const c of decompose(boxes)) {
      const owner = boxes.find((b) => b.label === c.label);
      if (!owner || !c.lo.every((lo, d) => owner.lo[d] <= lo && c.hi[d] <= owner.hi[d])) {
        throw new Error(`cell ${fmt(c)} is not inside its box ${owner ? fmt(owner) : '(none)'}\nboxes: ${boxes.map(fmt).join(' ')}`);
      }
    }
  }), { numRuns: 400 });
  t.pass('400 random box sets');
});

t.test('shared labels (a policy with several boxes): union and labels still hold', async (t) => {
  fc.assert(fc.property(inputArb(true), fc.nat(), (boxes, seed) => {
    const problem = checkCells(boxes, seed, minLabel);
    if (problem) throw new Error(`${problem}\nboxes: ${boxes.map(fmt).join(' ')}`);
    // A cell may merge adjacent boxes of one label, but it stays inside the union of that label's boxes.
    for (const c of decompose(boxes)) {
      const own = boxes.filter((b) => b.label === c.label);
      for (const p of samplePoints([], [c], mulberry(seed)).filter((q) => inside(c, q))) {
        if (!own.some((b) => inside(b, p))) throw new Error(`cell ${fmt(c)} reaches ${p.join(',')}, outside its label's boxes`);
      }
    }
  }), { numRuns: 300 });
  t.pass('300 random box sets');
});

t.test('with a rank, the cell goes to the covering label of lowest rank (ties: lowest label)', async (t) => {
  // lower() ranks bidirectional policies before unidirectional ones; here odd labels rank last.
  const rank = (l: number) => (l % 2 === 1 ? 1000 + l : l);
  const expect = (labels: number[]) => labels.reduce((a, b) => (rank(b) < rank(a) || (rank(b) === rank(a) && b < a) ? b : a));
  fc.assert(fc.property(inputArb(false), fc.nat(), (boxes, seed) => {
    const problem = checkCells(boxes, seed, expect, rank);
    if (problem) throw new Error(`${problem}\nboxes: ${boxes.map(fmt).join(' ')}`);
  }), { numRuns: 300 });
  t.pass('300 random box sets');
});

t.test('the result does not depend on the order of the boxes', async (t) => {
  fc.assert(fc.property(inputArb(true), fc.nat(), (boxes, seed) => {
    const rand = mulberry(seed);
    const shuffled = boxes.map((b) => [rand(), b] as const).sort((a, b) => a[0] - b[0]).map(([, b]) => b);
    const [a, b] = [decompose(shuffled), decompose(boxes)].map((cells) => cells.map(fmt).join(' '));
    if (a !== b) throw new Error(`order changed the cells:\n${a}\n${b}`);
  }), { numRuns: 200 });
  t.pass('200 random box sets, shuffled');
});

t.test('edge cases', async (t) => {
  t.same(decompose([]), [], 'no boxes, no cells');
  const one: Box = { lo: [1n, 2n], hi: [3n, 4n], label: 7 };
  t.same(decompose([one]), [one], 'a lone box is its own cell');
  const same = decompose([{ ...one, label: 2 }, { ...one, label: 1 }]);
  t.same(same, [{ ...one, label: 1 }], 'identical boxes: one cell, the lower label');
  const full = 2n ** 128n - 1n;
  const wide = decompose([
    { lo: [0n], hi: [full], label: 0 },
    { lo: [5n], hi: [5n], label: 1 },
  ]);
  t.same(wide, [{ lo: [0n], hi: [full], label: 0 }], 'a box inside a lower-labelled box disappears into it');
  const split = decompose([
    { lo: [0n], hi: [full], label: 1 },
    { lo: [5n], hi: [5n], label: 0 },
  ]);
  t.same(split.map((c) => [c.lo[0], c.hi[0], c.label]), [[0n, 4n, 1], [5n, 5n, 0], [6n, full, 1]], 'a lower-labelled box inside cuts a hole');
});
