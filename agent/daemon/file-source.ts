// source: file — watch the policies file or directory and deliver the whole set on every change.
// fs.watch is fast but not reliable everywhere (editors replace files by rename, some filesystems
// send nothing), so a periodic stat of the files backs it up; both are debounced into one read.
import { watch, type FSWatcher } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { readPolicySource } from '../io/files.js';
import type { PolicyDocument } from '../policy/acl.js';
import type { Problem } from '../policy/problems.js';

const EXTENSIONS = ['.json', '.yaml', '.yml'];

export type FileSetHandler = (result: { documents?: PolicyDocument[]; problems: Problem[] }) => Promise<unknown>;

export class FileSource {
  private watcher: FSWatcher | undefined;
  private poll: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private signature = '';
  private reading: Promise<void> | undefined;
  private pending = false;
  private stopped = false;

  constructor(
    readonly source: string,
    private readonly onSet: FileSetHandler,
    private readonly options: { debounceMs?: number; pollMs?: number } = {},
  ) {}

  /** Reads and delivers the set once, then watches. */
  async start(): Promise<void> {
    this.stopped = false;
    await this.deliver();
    this.watchPath();
    const pollMs = this.options.pollMs ?? 2_000;
    this.poll = setInterval(() => {
      void signatureOf(this.source).then((sig) => {
        if (sig !== this.signature) this.changed();
      });
    }, pollMs);
    this.poll.unref();
  }

  stop(): void {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.poll) clearInterval(this.poll);
    if (this.debounce) clearTimeout(this.debounce);
  }

  private watchPath(): void {
    // A file is watched through its directory: an editor's rename-over keeps being seen.
    void stat(this.source).then(
      (st) => {
        if (this.stopped) return;
        const dir = st.isDirectory() ? this.source : path.dirname(this.source);
        const only = st.isDirectory() ? undefined : path.basename(this.source);
        try {
          this.watcher = watch(dir, { persistent: false }, (_event, name) => {
            if (!only || !name || name === only) this.changed();
          });
          this.watcher.on('error', () => {
            this.watcher?.close();
            this.watcher = undefined; // the periodic stat carries on
          });
        } catch {
          // the periodic stat carries on
        }
      },
      () => undefined,
    );
  }

  /** Reads and delivers the set again now (e.g. after a config reload). */
  refresh(): Promise<void> {
    return this.deliver();
  }

  private changed(): void {
    if (this.stopped) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => void this.deliver(), this.options.debounceMs ?? 300);
  }

  /** One read at a time; changes during a read cause exactly one more. */
  private async deliver(): Promise<void> {
    if (this.reading) {
      this.pending = true;
      return this.reading;
    }
    this.reading = (async () => {
      do {
        this.pending = false;
        this.signature = await signatureOf(this.source);
        const loaded = await readPolicySource(this.source);
        const errors = loaded.problems.some((p) => p.severity === 'error');
        await this.onSet(errors ? { problems: loaded.problems } : { documents: loaded.value ?? [], problems: loaded.problems });
      } while (this.pending && !this.stopped);
    })().finally(() => {
      this.reading = undefined;
    });
    return this.reading;
  }
}

/** Names, sizes, mtimes and inodes of the policy files: any edit changes it. */
export async function signatureOf(source: string): Promise<string> {
  try {
    const st = await stat(source);
    if (!st.isDirectory()) return `${st.ino}:${st.size}:${st.mtimeMs}`;
    const names = (await readdir(source)).filter((n) => EXTENSIONS.includes(path.extname(n))).sort();
    const parts: string[] = [];
    for (const n of names) {
      const s = await stat(path.join(source, n)).catch(() => undefined);
      parts.push(s ? `${n}:${s.ino}:${s.size}:${s.mtimeMs}` : `${n}:gone`);
    }
    return parts.join('|');
  } catch (e) {
    return `error:${(e as NodeJS.ErrnoException).code ?? 'unknown'}`;
  }
}
