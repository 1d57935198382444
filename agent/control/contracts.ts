// Contracts between the control plane (local API, store, remote client) and the daemon.
// Kept as types only, so both sides can be built and tested on their own.
import type { Problem } from '../policy/problems.js';

/** An ACL object exactly as the Cloudflare API shapes it (`id`, `name`, `lan_1`, `lan_2`, …). */
export type AclObject = Record<string, unknown> & { id: string };

/** A LAN as `GET …/lans` lists it. */
export interface LanInfo {
  id: string;
  name: string;
  interface?: string;
}

/** Cloudflare's envelope item: `{"code": 1000, "message": "…"}`. */
export interface ApiMessage {
  code: number;
  message: string;
}

/**
 * The daemon's answer to "enforce exactly this set of ACLs": validated and applied to the kernel
 * (or, for `connector-acl api`, only validated). On `ok: false` nothing changed and the caller
 * rolls its write back.
 */
export type EnforceOutcome =
  | { ok: true; warnings: Problem[] }
  | { ok: false; problems: Problem[]; reason: 'invalid' | 'apply-failed' };

export type Enforcer = (acls: readonly AclObject[]) => Promise<EnforceOutcome>;

/** What a policy source yields each time it is asked. */
export type SourceResult =
  | { kind: 'acls'; acls: AclObject[]; lans?: LanInfo[]; revision?: string }
  | { kind: 'unchanged'; revision?: string }
  | { kind: 'error'; errorKind: SourceErrorKind; message: string };

export type SourceErrorKind = 'unreachable' | 'timeout' | 'http' | 'auth' | 'malformed' | 'api-error';
