// nft's English stderr, classified into the few kinds callers act on, and mapped back to policies.

export type NftErrorKind = 'permission' | 'not-found' | 'syntax' | 'exists' | 'busy' | 'unsupported' | 'other';

export interface NftDiagnostic {
  line?: number;
  message: string;
  /** The policy whose line nft complained about, when the line belongs to one. */
  policyId?: string;
}

export class NftError extends Error {
  constructor(
    readonly kind: NftErrorKind,
    readonly diagnostics: NftDiagnostic[],
    readonly stderr: string,
  ) {
    super(diagnostics.map((d) => d.message).join('; ') || stderr.trim() || 'nft failed');
    this.name = 'NftError';
  }
}

export function classifyNftStderr(stderr: string): NftErrorKind {
  if (/Operation not permitted|Permission denied/i.test(stderr)) return 'permission';
  if (/syntax error|unexpected|No symbol type information|Could not parse/i.test(stderr)) return 'syntax';
  if (/No such file or directory|does not exist/i.test(stderr)) return 'not-found';
  if (/File exists/i.test(stderr)) return 'exists';
  if (/Device or resource busy|Resource busy/i.test(stderr)) return 'busy';
  if (/not supported|Protocol not supported|Unsupported/i.test(stderr)) return 'unsupported';
  return 'other';
}

export const isPermissionError = (e: unknown): boolean => e instanceof NftError && e.kind === 'permission';
export const isNotFound = (e: unknown): boolean => e instanceof NftError && e.kind === 'not-found';

/** `/dev/stdin:12:5-10: Error: …` → line 12 and the message, owner looked up in the renderer's line map. */
export function parseNftDiagnostics(stderr: string, lineOwners?: ReadonlyMap<number, string>): NftDiagnostic[] {
  const out: NftDiagnostic[] = [];
  for (const raw of stderr.split('\n')) {
    const m = /^(?:\/dev\/stdin|-|[^:\s]+):(\d+):\d+(?:-\d+)?: Error: (.*)$/.exec(raw);
    if (m) {
      const line = Number(m[1]);
      out.push({ line, message: m[2], policyId: lineOwners?.get(line) });
    } else if (/^Error: /.test(raw)) {
      out.push({ message: raw.replace(/^Error: /, '') });
    }
  }
  return out;
}

export function nftErrorFrom(stderr: string, lineOwners?: ReadonlyMap<number, string>): NftError {
  return new NftError(classifyNftStderr(stderr), parseNftDiagnostics(stderr, lineOwners), stderr);
}
