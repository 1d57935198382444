// parseDocumentText: YAML and JSON documents, and syntax errors with line and column.
import t from 'tap';
import { parseDocumentText } from '../agent/io/files.js';
import { formatProblem } from '../agent/policy/problems.js';

const errors = (text: string, file: string) => parseDocumentText(text, file).problems.map(formatProblem);

t.test('valid documents', async (t) => {
  t.same(parseDocumentText('lans:\n  - id: a\n    subnets: [198.18.1.0/24]\n', 'c.yaml'), { value: { lans: [{ id: 'a', subnets: ['198.18.1.0/24'] }] }, problems: [] });
  t.same(parseDocumentText('[{"id": "x", "ports": [1, 2]}]', 'acls.json'), { value: [{ id: 'x', ports: [1, 2] }], problems: [] });
  t.same(parseDocumentText('{"result": [], "success": true}', 'acls.yml'), { value: { result: [], success: true }, problems: [] }, 'JSON in a .yml file');
  t.same(parseDocumentText('', 'empty.yaml'), { value: null, problems: [] }, 'an empty YAML file is null (an empty policy list)');
  t.same(parseDocumentText('mark: 0x0cf00000\n', 'c.yaml').value, { mark: 0x0cf00000 }, 'YAML 1.2 hex integers');
});

t.test('JSON syntax errors carry line and column', async (t) => {
  t.same(errors('[\n  {"a": 1}\n  {"b": 2}\n]', 'acls.json'), ['acls.json:3:3: invalid JSON: Expected \',\' or \']\' after array element']);
  t.same(errors('{\n  "a": 1,\n  "b": [1, 2,]\n}', 'acls.json'), ['acls.json:3:14: invalid JSON: Unexpected token \']\''], 'trailing comma (V8 gives no position)');
  t.same(errors('[1,]', 'acls.json'), ['acls.json:1:4: invalid JSON: Unexpected token \']\'']);
  t.same(errors('{"a":1,}', 'acls.json'), ['acls.json:1:8: invalid JSON: Expected double-quoted property name']);
  t.same(errors('{"a": ', 'acls.json'), ['acls.json:1:7: invalid JSON: unexpected end of input']);
  t.same(errors('[\n  {"a": 1},\n', 'acls.json'), ['acls.json:3:1: invalid JSON: unexpected end of input']);
  t.same(errors('', 'acls.json'), ['acls.json:1:1: invalid JSON: unexpected end of input'], 'an empty .json file (e.g. a failed curl) is not silently empty');
  t.same(errors('[1] x', 'acls.json'), ['acls.json:1:5: invalid JSON: Unexpected non-whitespace character after JSON']);
  t.same(errors("[{'a': 1}]", 'acls.json'), ['acls.json:1:3: invalid JSON: Expected property name or \'}\'']);
  for (const text of ['{\n"a": tru\n}', '[1, 2, 3\n  4]', '{"x": [1, 2}']) {
    const p = parseDocumentText(text, 'acls.json').problems;
    t.equal(p.length, 1, `one problem for ${JSON.stringify(text)}`);
    t.ok(p[0].line !== undefined && p[0].column !== undefined, `line and column for ${JSON.stringify(text)}: ${formatProblem(p[0])}`);
    t.notMatch(p[0].message, /\n|is not valid JSON|position/, 'no V8 snippet or offset in the message');
  }
});

t.test('YAML syntax errors carry line and column', async (t) => {
  t.same(errors('a: 1\na: 2\n', 'c.yaml'), ['c.yaml:2:1: invalid YAML: Map keys must be unique']);
  t.same(errors('lans:\n  - id: x\n   name: y\n', 'c.yaml'), ['c.yaml:3:1: invalid YAML: Sequence item without - indicator']);
  t.same(errors('lans:\n\t- id: x\n', 'c.yaml'), ['c.yaml:2:1: invalid YAML: Tabs are not allowed as indentation']);
  t.same(errors('policies: "unterminated\n', 'c.yaml'), ['c.yaml:2:1: invalid YAML: Missing closing "quote']);
  t.same(errors('{"a": 1', 'acls.yaml'), ['acls.yaml:1:8: invalid JSON: Flow map must end with a }'], 'JSON-looking YAML says JSON');
});

t.test('YAML that parses but cannot be resolved is a problem, not a crash', async (t) => {
  t.same(errors('- *nowhere\n', 'p.yaml'), ['p.yaml: invalid YAML: Unresolved alias (the anchor must be set before the alias): nowhere']);
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', ...Array.from({ length: 6 }, (_, i) => {
    const prev = i === 0 ? 'a' : `l${i - 1}`;
    return `l${i}: &l${i} [*${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}, *${prev}]`;
  })].join('\n');
  const p = parseDocumentText(bomb, 'bomb.yaml');
  t.equal(p.value, undefined, 'an alias bomb is refused');
  t.match(p.problems.map(formatProblem), [/^bomb\.yaml: invalid YAML: Excessive alias count/]);
});
