// Reading the site config and policy files from disk. Parse errors carry line and column.
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import type { PolicyDocument } from '../policy/acl.js';
import type { Problem } from '../policy/problems.js';

export interface Loaded<T> {
  value?: T;
  problems: Problem[];
}

const POLICY_EXTENSIONS = ['.json', '.yaml', '.yml'];

/** Parses JSON or YAML text (JSON is chosen by extension or a leading `{`/`[`). */
export function parseDocumentText(text: string, file: string): Loaded<unknown> {
  const looksJson = file.endsWith('.json') || /^\s*[[{]/.test(text);
  if (looksJson && file.endsWith('.json')) {
    try {
      return { value: JSON.parse(text), problems: [] };
    } catch (err) {
      const message = (err as Error).message;
      const pos = /position (\d+)/.exec(message);
      const { line, column } = pos ? lineColumn(text, Number(pos[1])) : { line: undefined, column: undefined };
      return { problems: [{ severity: 'error', file, line, column, message: `invalid JSON: ${message.replace(/ in JSON at position \d+.*$/, '')}` }] };
    }
  }
  const doc = YAML.parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      problems: doc.errors.map((e) => ({
        severity: 'error' as const,
        file,
        line: e.linePos?.[0].line,
        column: e.linePos?.[0].col,
        message: `invalid ${looksJson ? 'JSON' : 'YAML'}: ${e.message.split('\n')[0]}`,
      })),
    };
  }
  return { value: doc.toJS({ maxAliasCount: 100 }), problems: [] };
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

export async function readDocument(file: string): Promise<Loaded<unknown>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    return { problems: [{ severity: 'error', file, message: `cannot read: ${describeFsError(err)}` }] };
  }
  return parseDocumentText(text, file);
}

/** A policies source is a file, or a directory whose *.json, *.yaml and *.yml files are read in name order. */
export async function readPolicySource(source: string): Promise<Loaded<PolicyDocument[]>> {
  let isDir: boolean;
  try {
    isDir = (await stat(source)).isDirectory();
  } catch (err) {
    return { problems: [{ severity: 'error', file: source, message: `cannot read policies: ${describeFsError(err)}` }] };
  }
  const files = isDir
    ? (await readdir(source)).filter((f) => POLICY_EXTENSIONS.includes(path.extname(f))).sort().map((f) => path.join(source, f))
    : [source];
  const docs: PolicyDocument[] = [];
  const problems: Problem[] = [];
  for (const file of files) {
    const loaded = await readDocument(file);
    problems.push(...loaded.problems);
    if (loaded.problems.length === 0) docs.push({ file, content: loaded.value });
  }
  return { value: docs, problems };
}

export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return 'no such file or directory';
  if (e.code === 'EACCES') return 'permission denied';
  if (e.code === 'EISDIR') return 'is a directory';
  return e.message;
}
