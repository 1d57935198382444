// Reading the site config and policy files from disk. Parse errors carry line and column.
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import YAML, { LineCounter } from 'yaml';
import type { PolicyDocument } from '../policy/acl.js';
import type { Problem } from '../policy/problems.js';

export interface Loaded<T> {
  value?: T;
  problems: Problem[];
}

const POLICY_EXTENSIONS = ['.json', '.yaml', '.yml'];

/** Parses JSON or YAML text (JSON by the `.json` extension). Syntax errors carry line and column. */
export function parseDocumentText(text: string, file: string): Loaded<unknown> {
  if (file.endsWith('.json')) {
    try {
      return { value: JSON.parse(text), problems: [] };
    } catch (err) {
      const { message, offset } = describeJsonError(text, (err as Error).message);
      const { line, column } = lineColumn(text, offset);
      return { problems: [{ severity: 'error', file, line, column, message: `invalid JSON: ${message}` }] };
    }
  }
  const looksJson = /^\s*[[{]/.test(text);
  const lineCounter = new LineCounter();
  const doc = YAML.parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter });
  if (doc.errors.length > 0) {
    return {
      problems: doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return {
          severity: 'error' as const,
          file,
          line: pos.line,
          column: pos.col,
          message: `invalid ${looksJson ? 'JSON' : 'YAML'}: ${e.message.split('\n')[0]}`,
        };
      }),
    };
  }
  try {
    return { value: doc.toJS({ maxAliasCount: 100 }), problems: [] };
  } catch (err) {
    // An alias to an unknown anchor, or too many aliases (a "billion laughs" document).
    return { problems: [{ severity: 'error', file, message: `invalid YAML: ${(err as Error).message}` }] };
  }
}

/**
 * V8's JSON errors name the position for most mistakes but not all ("Unexpected token ']',
 * ...snippet... is not valid JSON", "Unexpected end of JSON input"). Then the position is found
 * as the shortest prefix that already fails before its end.
 */
function describeJsonError(text: string, raw: string): { message: string; offset: number } {
  const at = / at position (\d+)/.exec(raw);
  let message = raw.replace(/ (in JSON )?at position \d+.*$/s, '');
  if (at) return { message, offset: Number(at[1]) };
  if (/^Unexpected end of JSON input/.test(raw)) return { message: 'unexpected end of input', offset: text.length };
  const hardError = (length: number): boolean => {
    try {
      JSON.parse(text.slice(0, length));
      return false;
    } catch (e) {
      // A cut-off prefix fails at its very end; a real mistake fails before it.
      const m = (e as Error).message;
      if (/^Unexpected end of JSON input/.test(m)) return false;
      const pos = / at position (\d+)/.exec(m);
      return !pos || Number(pos[1]) < length;
    }
  };
  let lo = 1;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (hardError(mid)) hi = mid;
    else lo = mid + 1;
  }
  const offset = lo - 1;
  const c = text[offset];
  if (/^Unexpected token/.test(raw)) message = `Unexpected ${c === '\n' || c === '\r' ? 'line break' : /\s/.test(c) ? 'white space' : `token '${c}'`}`;
  else message = 'not valid JSON';
  return { message, offset };
}

/** 1-based line and column of a character offset. */
function lineColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.min(offset, text.length));
  const line = before.split('\n').length;
  return { line, column: before.length - before.lastIndexOf('\n') };
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
