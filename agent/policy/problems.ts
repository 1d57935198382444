// A problem found in the input: what is wrong, and exactly where (file, policy, field).
// Conversion collects every problem instead of stopping at the first one.

export type Severity = 'error' | 'warning';

export interface PolicyRef {
  name?: string;
  id?: string;
}

export interface Problem {
  severity: Severity;
  file?: string;
  policy?: PolicyRef;
  /** Field path inside the policy or config, e.g. `lan_2.port_ranges[0]`. */
  path?: string;
  message: string;
  line?: number;
  column?: number;
}

export function formatProblem(p: Problem): string {
  const parts: string[] = [];
  if (p.file) parts.push(p.line ? `${p.file}:${p.line}:${p.column ?? 1}` : p.file);
  if (p.policy) parts.push(describePolicy(p.policy));
  if (p.path) parts.push(p.path);
  parts.push(p.message);
  return parts.join(': ');
}

export function describePolicy(ref: PolicyRef): string {
  if (ref.name && ref.id) return `policy "${ref.name}" (${ref.id})`;
  if (ref.name) return `policy "${ref.name}"`;
  if (ref.id) return `policy ${ref.id}`;
  return 'policy';
}

export const hasErrors = (problems: readonly Problem[]): boolean =>
  problems.some((p) => p.severity === 'error');

/** Collects problems that share a file and policy, so call sites only say what and where. */
export class ProblemSink {
  readonly problems: Problem[] = [];
  constructor(private readonly base: { file?: string; policy?: PolicyRef } = {}) {}

  error(path: string | undefined, message: string): void {
    this.problems.push({ severity: 'error', ...this.base, path, message });
  }
  warn(path: string | undefined, message: string): void {
    this.problems.push({ severity: 'warning', ...this.base, path, message });
  }
  scoped(base: { file?: string; policy?: PolicyRef }): ProblemSink {
    const child = new ProblemSink({ ...this.base, ...base });
    // Children write into the parent's list so callers read one list.
    (child as { problems: Problem[] }).problems = this.problems;
    return child;
  }
}
