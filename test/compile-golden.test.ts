// Golden tests: the full nft script compiled for a few sites, byte for byte. Each expected.nft
// is a spec, reviewed by eye; when the compiler changes on purpose, regenerate and review the diff:
//
//   UPDATE_GOLDEN=1 npx tap test/compile-golden.test.ts && git diff test/fixtures/golden
//
// Also: the output does not depend on policy order or file split, and the pure core (policy
// model, IR, renderer) imports no I/O module.
import t from 'tap';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocumentText } from '../agent/io/files.js';
import type { PolicyDocument } from '../agent/policy/acl.js';
import { validate } from '../agent/policy/load.js';
import { formatProblem } from '../agent/policy/problems.js';
import { lower } from '../agent/ir/lower.js';
import { render } from '../agent/nft/render.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const GOLDEN = path.join(ROOT, 'test/fixtures/golden');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

interface Case {
  name: string;
  site: string;
  policies: string;
}

// The rules/ example is compiled straight from rules/, so a change there shows up here.
const CASES: Case[] = [
  { name: 'rules-example', site: path.join(ROOT, 'rules/site.yaml'), policies: path.join(ROOT, 'rules/policies.yaml') },
  ...readdirSync(GOLDEN, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(path.join(GOLDEN, d.name, 'site.yaml')))
    .map((d) => ({ name: d.name, site: path.join(GOLDEN, d.name, 'site.yaml'), policies: path.join(GOLDEN, d.name, 'policies.yaml') }))
    .sort((a, b) => a.name.localeCompare(b.name)),
];

function readDoc(file: string): unknown {
  const parsed = parseDocumentText(readFileSync(file, 'utf8'), path.basename(file));
  if (parsed.problems.length > 0) throw new Error(parsed.problems.map(formatProblem).join('\n'));
  return parsed.value;
}

function compile(siteDoc: unknown, docs: PolicyDocument[]): string {
  const v = validate(siteDoc, 'site.yaml', docs);
  const errors = v.problems.filter((p) => p.severity === 'error');
  if (!v.ok || !v.site || !v.policies) throw new Error(errors.map(formatProblem).join('\n'));
  return render(lower(v.site, v.policies)).text;
}

/** The ACL list of a document (plain list or API envelope). */
const aclsOf = (content: unknown): unknown[] =>
  Array.isArray(content) ? content : ((content as { result?: unknown[] } | null)?.result ?? []);

t.test('golden rulesets', async (t) => {
  t.ok(CASES.length >= 6, `${CASES.length} cases`);
  for (const c of CASES) {
    const text = compile(readDoc(c.site), [{ file: 'policies.yaml', content: readDoc(c.policies) }]);
    const expectedFile = path.join(GOLDEN, c.name, 'expected.nft');
    if (UPDATE) {
      mkdirSync(path.dirname(expectedFile), { recursive: true });
      writeFileSync(expectedFile, text);
      t.pass(`${c.name}: wrote ${path.relative(ROOT, expectedFile)}`);
      continue;
    }
    t.ok(existsSync(expectedFile), `${c.name}: expected.nft exists (UPDATE_GOLDEN=1 writes it)`);
    if (!existsSync(expectedFile)) continue;
    // Compared as text so a failure shows a line diff; then byte for byte.
    const expected = readFileSync(expectedFile, 'utf8');
    t.equal(text, expected, `${c.name}: compiled ruleset equals expected.nft`);
  }
});

t.test('same input, byte-identical output, whatever the policy order or file split', async (t) => {
  for (const c of CASES) {
    const siteDoc = readDoc(c.site);
    const acls = aclsOf(readDoc(c.policies));
    const base = compile(siteDoc, [{ file: 'policies.yaml', content: acls }]);
    t.equal(compile(siteDoc, [{ file: 'policies.yaml', content: acls }]), base, `${c.name}: compiled twice`);
    t.equal(compile(siteDoc, [{ file: 'policies.yaml', content: [...acls].reverse() }]), base, `${c.name}: policies reversed`);
    const rotated = [...acls.slice(1), ...acls.slice(0, 1)];
    t.equal(compile(siteDoc, [{ file: 'policies.yaml', content: rotated }]), base, `${c.name}: policies rotated`);
    const half = Math.ceil(acls.length / 2);
    t.equal(compile(siteDoc, [
      { file: 'b.json', content: { result: acls.slice(half), success: true, errors: [], messages: [] } },
      { file: 'a.yaml', content: acls.slice(0, half) },
    ]), base, `${c.name}: split over two files (one an API envelope)`);
  }
});

t.test('the pure core imports no Node I/O module', async (t) => {
  const pure = [
    ...readdirSync(path.join(ROOT, 'agent/policy')).filter((f) => f.endsWith('.ts')).map((f) => `agent/policy/${f}`),
    ...readdirSync(path.join(ROOT, 'agent/ir')).filter((f) => f.endsWith('.ts')).map((f) => `agent/ir/${f}`),
    'agent/nft/render.ts',
  ];
  const allowedPackages = new Set(['node:crypto', 'ipaddr.js']);
  const pureSet = new Set(pure);
  t.ok(pure.length >= 10, `${pure.length} files scanned`);
  for (const file of pure) {
    const source = readFileSync(path.join(ROOT, file), 'utf8');
    const specifiers = [
      ...source.matchAll(/^\s*(?:import|export)\s[^;]*?\bfrom\s+['"]([^'"]+)['"]/gms),
      ...source.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm),
      ...source.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
      ...source.matchAll(/\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
    ].map((m) => m[1]);
    for (const spec of specifiers) {
      if (spec.startsWith('.')) {
        // Relative imports must stay inside the pure core, so it is pure transitively.
        const target = path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, file)), spec)).replace(/\.js$/, '.ts');
        t.ok(pureSet.has(target), `${file} imports ${spec}: inside the pure core`);
      } else {
        t.ok(allowedPackages.has(spec), `${file} imports ${spec}: allowed (${[...allowedPackages].join(', ')})`);
      }
    }
    t.notMatch(source, /\bprocess\.(env|argv|stdout|stderr|exit)\b/, `${file} does not read the process environment or write output`);
  }
});
