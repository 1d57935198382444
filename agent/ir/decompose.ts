// Disjoint decomposition of labelled boxes.
//
// nft interval sets with concatenated keys (the pipapo backend) refuse elements that partly
// overlap, but overlapping policies are normal ("any host to :443" and "host X to any port").
// So the union of the policies' boxes is cut into pairwise-disjoint cells, each labelled with
// one covering policy (the lowest label, i.e. the first policy by id) for counting.
// Adjacent cells with the same label are merged per dimension to keep the element count low.

export interface Box {
  lo: bigint[];
  hi: bigint[];
  label: number;
}

export type Cell = Box;

/** Returns disjoint cells whose union equals the union of `boxes`. Every dimension is inclusive. */
export function decompose(boxes: readonly Box[]): Cell[] {
  if (boxes.length === 0) return [];
  const dims = boxes[0].lo.length;
  return split(boxes, 0, dims).map((p) => ({ lo: p.lo, hi: p.hi, label: p.label }));
}

interface Part {
  lo: bigint[];
  hi: bigint[];
  label: number;
}

function split(boxes: readonly Box[], d: number, dims: number): Part[] {
  if (d === dims) {
    let label = boxes[0].label;
    for (const b of boxes) if (b.label < label) label = b.label;
    return [{ lo: [], hi: [], label }];
  }
  // Fast path: one box covers its own range in the remaining dimensions.
  if (boxes.length === 1) {
    const b = boxes[0];
    return [{ lo: b.lo.slice(d), hi: b.hi.slice(d), label: b.label }];
  }

  const points = uniqueSorted(boxes.flatMap((b) => [b.lo[d], b.hi[d] + 1n]));
  const byStart = [...boxes].sort((a, b) => cmp(a.lo[d], b.lo[d]));
  const out: Part[] = [];
  let active: Box[] = [];
  let next = 0;
  let run: { start: bigint; end: bigint; sub: Part[]; key: string } | undefined;

  const flush = () => {
    if (!run) return;
    for (const p of run.sub) out.push({ lo: [run.start, ...p.lo], hi: [run.end, ...p.hi], label: p.label });
    run = undefined;
  };

  for (let i = 0; i < points.length - 1; i++) {
    const start = points[i];
    const end = points[i + 1] - 1n;
    active = active.filter((b) => b.hi[d] >= start);
    while (next < byStart.length && byStart[next].lo[d] <= start) active.push(byStart[next++]);
    if (active.length === 0) {
      flush();
      continue;
    }
    const sub = split(active, d + 1, dims);
    const key = partsKey(sub);
    if (run && run.end + 1n === start && run.key === key) run.end = end;
    else {
      flush();
      run = { start, end, sub, key };
    }
  }
  flush();
  return out;
}

const cmp = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);

function uniqueSorted(values: bigint[]): bigint[] {
  const sorted = values.sort(cmp);
  return sorted.filter((v, i) => i === 0 || v !== sorted[i - 1]);
}

function partsKey(parts: Part[]): string {
  let s = '';
  for (const p of parts) s += `${p.lo.join(',')}|${p.hi.join(',')}|${p.label};`;
  return s;
}
