// What the running agent reports about itself: kept in memory, written atomically to
// state_dir/status.json (for `connector-acl status`) and served at /status on the metrics listener.
import path from 'node:path';
import { readDocument } from '../io/files.js';
import { parseAgentConfig, DEFAULT_STATE_DIR } from '../control/config.js';
import { readJsonFile, writeFileAtomic } from './atomic.js';

export const STATUS_FILE = 'status.json';

/** starting → enforcing-lkg → synced; unreachable/auth-failed/rejected while the last good set stays enforced. */
export type SourceState = 'starting' | 'synced' | 'unreachable' | 'auth-failed' | 'error' | 'rejected';
export const SOURCE_STATES: readonly SourceState[] = ['starting', 'synced', 'unreachable', 'auth-failed', 'error', 'rejected'];

export interface ApplyRecord {
  hash: string;
  at: string;
  durationMs: number;
  policies: number;
  origin: string;
}

export interface AgentStatus {
  pid: number;
  startedAt: string;
  updatedAt: string;
  source: { kind: string; state: SourceState; detail?: string };
  /** What the kernel enforces: the source's latest set, the last-known-good, or nothing yet. */
  enforcing: 'none' | 'last-known-good' | 'source';
  lastSync?: string;
  lastApply?: ApplyRecord;
  lastError?: { at: string; kind: string; message: string };
  lastRejection?: { at: string; origin: string; reasons: string[] };
  policies: number;
  driftRepairs: number;
  lastDriftCheck?: string;
  config: { file: string; loadedAt: string };
}

export function newStatus(kind: string, configFile: string, now = new Date()): AgentStatus {
  const at = now.toISOString();
  return {
    pid: process.pid, startedAt: at, updatedAt: at, source: { kind, state: 'starting' }, enforcing: 'none',
    policies: 0, driftRepairs: 0, config: { file: configFile, loadedAt: at },
  };
}

/** Writes status.json at most every `minIntervalMs`, always the newest state, never concurrently. */
export class StatusWriter {
  private writing: Promise<void> | undefined;
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private lastWrite = 0;

  constructor(readonly file: string, private readonly get: () => AgentStatus, private readonly minIntervalMs = 250) {}

  touch(): void {
    this.dirty = true;
    if (this.timer || this.writing) return;
    const wait = Math.max(0, this.lastWrite + this.minIntervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, wait);
    this.timer.unref();
  }

  async flush(): Promise<void> {
    if (this.writing) {
      await this.writing;
      if (!this.dirty) return;
    }
    this.dirty = false;
    const status = { ...this.get(), updatedAt: new Date().toISOString() };
    this.writing = writeFileAtomic(this.file, `${JSON.stringify(status, null, 2)}\n`, 0o644)
      .catch(() => undefined)
      .finally(() => {
        this.writing = undefined;
        this.lastWrite = Date.now();
        if (this.dirty) this.touch();
      });
    await this.writing;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export interface AgentStatusView {
  stateDir: string;
  file: string;
  status?: AgentStatus;
  /** Whether the process that wrote it is still running. */
  running: boolean;
  error?: string;
}

/** Reads the agent's status.json from the state_dir that the config names (default /var/lib/connector-acl). */
export async function readAgentStatusForConfig(configFile: string): Promise<AgentStatusView> {
  let stateDir = DEFAULT_STATE_DIR;
  const doc = await readDocument(configFile);
  if (doc.problems.length === 0) stateDir = parseAgentConfig(doc.value, configFile).config?.stateDir ?? stateDir;
  return readAgentStatus(stateDir);
}

export async function readAgentStatus(stateDir: string): Promise<AgentStatusView> {
  const file = path.join(stateDir, STATUS_FILE);
  try {
    const status = await readJsonFile<AgentStatus>(file);
    return { stateDir, file, status, running: status ? processAlive(status.pid) : false };
  } catch (e) {
    return { stateDir, file, running: false, error: (e as Error).message };
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const ago = (iso: string | undefined, now: number): string => {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return `${iso} (${s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`} ago)`;
};

/** Human lines for `connector-acl status`. */
export function agentStatusLines(view: AgentStatusView, now = Date.now()): string[] {
  const s = view.status;
  // No agent has run with this state_dir: the CLI alone manages the table; say nothing.
  if (!s) return view.error ? [`agent: status unreadable in ${view.stateDir}: ${view.error}`] : [];
  const lines = [
    `agent: ${view.running ? `running (pid ${s.pid})` : `NOT RUNNING (last status from pid ${s.pid}, ${ago(s.updatedAt, now)}); the kernel keeps the last ruleset`}`,
    `  source: ${s.source.kind}, ${s.source.state}${s.source.detail ? ` (${s.source.detail})` : ''}; enforcing ${s.enforcing}`,
    `  last sync: ${ago(s.lastSync, now)}`,
    s.lastApply
      ? `  last apply: ruleset ${s.lastApply.hash}, ${s.lastApply.policies} policies, ${s.lastApply.durationMs.toFixed(0)} ms, ${ago(s.lastApply.at, now)} (${s.lastApply.origin})`
      : '  last apply: none',
    `  policies: ${s.policies}; drift repairs: ${s.driftRepairs}`,
  ];
  if (s.lastError) lines.push(`  last error: ${s.lastError.kind}: ${s.lastError.message} (${ago(s.lastError.at, now)})`);
  if (s.lastRejection) {
    lines.push(`  last rejected set (${s.lastRejection.origin}, ${ago(s.lastRejection.at, now)}):`);
    for (const r of s.lastRejection.reasons.slice(0, 10)) lines.push(`    ${r}`);
    if (s.lastRejection.reasons.length > 10) lines.push(`    … ${s.lastRejection.reasons.length - 10} more`);
  }
  return lines;
}
