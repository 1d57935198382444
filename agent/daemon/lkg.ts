// Last-known-good: the policy set and the compiled ruleset of the last successful apply, kept in
// state_dir so that a restart (or the boot unit, before any interface is up) enforces them again
// before the policy source answers. Each file is replaced atomically (see atomic.ts); the two
// files are written in an order that keeps each one whole on its own:
//   lkg-ruleset.nft  – what `connector-acl boot` loads with `nft -f` (no Node.js logic needed)
//   lkg.json         – the policy documents, hash and metadata the agent re-validates and re-applies
import { readdir, readFile, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { PolicyDocument } from '../policy/acl.js';
import { readJsonFile, writeFileAtomic } from './atomic.js';

export const LKG_JSON = 'lkg.json';
export const LKG_RULESET = 'lkg-ruleset.nft';
const FORMAT = 1;

export interface LkgEntry {
  format: typeof FORMAT;
  savedAt: string;
  /** Hash of the compiled ruleset (the table comment's `hash=`). */
  rulesetHash: string;
  table: string;
  policyCount: number;
  /** Where the set came from: `local`, `remote`, `file`. */
  source: string;
  /** The policy documents exactly as validated (ACL objects in the API's shape). */
  documents: PolicyDocument[];
}

export class LastKnownGood {
  constructor(readonly stateDir: string) {}

  get jsonPath(): string {
    return path.join(this.stateDir, LKG_JSON);
  }

  get rulesetPath(): string {
    return path.join(this.stateDir, LKG_RULESET);
  }

  /** Removes temp files a killed writer left behind (they never replace the real files). */
  async sweep(): Promise<string[]> {
    const removed: string[] = [];
    let names: string[] = [];
    try {
      names = await readdir(this.stateDir);
    } catch {
      return removed;
    }
    for (const n of names) {
      const m = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/.exec(n);
      if (m && Number(m[1]) !== process.pid) {
        await unlink(path.join(this.stateDir, n)).catch(() => undefined);
        removed.push(n);
      }
    }
    return removed;
  }

  /** Ruleset first: a crash between the two leaves a newer ruleset for boot and an older set for the agent, each whole. */
  async save(entry: Omit<LkgEntry, 'format' | 'savedAt'>, rulesetScript: string, now = new Date()): Promise<void> {
    await writeFileAtomic(this.rulesetPath, rulesetScript);
    const full: LkgEntry = { format: FORMAT, savedAt: now.toISOString(), ...entry };
    await writeFileAtomic(this.jsonPath, `${JSON.stringify(full)}\n`);
  }

  /** The saved set, or undefined when there is none. A damaged file is an error the caller reports. */
  async load(): Promise<LkgEntry | undefined> {
    const entry = await readJsonFile<LkgEntry>(this.jsonPath);
    if (entry === undefined) return undefined;
    if (entry.format !== FORMAT || !Array.isArray(entry.documents) || typeof entry.rulesetHash !== 'string') {
      throw new Error(`${this.jsonPath}: not a last-known-good file of format ${FORMAT}`);
    }
    return entry;
  }

  async loadRuleset(): Promise<string | undefined> {
    try {
      return await readFile(this.rulesetPath, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }
}

export const PID_FILE = 'agent.pid';

/**
 * One agent per state_dir: a second one would fight the first over the table. The pid file names
 * the running agent; a stale one (process gone, or not an agent any more) is taken over.
 */
export async function claimStateDir(stateDir: string): Promise<{ release(): Promise<void> }> {
  const file = path.join(stateDir, PID_FILE);
  const other = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  if (Number.isInteger(other) && other > 0 && other !== process.pid) {
    const cmdline = await readFile(`/proc/${other}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('connector-acl') || / agent(\s|$)/.test(cmdline.replaceAll('\0', ' '))) {
      throw new Error(`another agent (pid ${other}) is running with state_dir ${stateDir}`);
    }
  }
  await writeFileAtomic(file, `${process.pid}\n`, 0o644);
  return {
    release: async () => {
      const now = (await readFile(file, 'utf8').catch(() => '')).trim();
      if (now === String(process.pid)) await unlink(file).catch(() => undefined);
    },
  };
}
