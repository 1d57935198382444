// sd_notify without native modules: Node.js cannot send on a unix datagram socket, so messages go
// through `systemd-notify` (started through the CommandRunner seam). Its known weakness is that a
// message from a short-lived helper may not be attributed to the unit (the unit sets
// NotifyAccess=all for that reason); READY=1 is therefore repeated with every WATCHDOG=1 ping, so
// a lost READY is made good at the next ping instead of failing the start.
import type { CommandRunner } from '../nft/exec.js';

export class SystemdNotifier {
  private ready = false;
  private timer: NodeJS.Timeout | undefined;
  readonly enabled: boolean;
  /** Watchdog period systemd asked for (WATCHDOG_USEC), in ms; undefined when there is none. */
  readonly watchdogMs: number | undefined;

  constructor(private readonly runner: CommandRunner, env: NodeJS.ProcessEnv = process.env, private readonly onError?: (e: string) => void) {
    this.enabled = !!env.NOTIFY_SOCKET;
    const usec = Number(env.WATCHDOG_USEC);
    const forUs = env.WATCHDOG_PID === undefined || Number(env.WATCHDOG_PID) === process.pid;
    this.watchdogMs = this.enabled && forUs && Number.isFinite(usec) && usec > 0 ? usec / 1000 : undefined;
  }

  async send(assignments: string[]): Promise<boolean> {
    if (!this.enabled) return false;
    try {
      const r = await this.runner.run(['systemd-notify', `--pid=${process.pid}`, ...assignments], { timeoutMs: 5_000 });
      if (r.code !== 0) this.onError?.(`systemd-notify ${assignments.join(' ')}: ${r.stderr.trim() || `exit ${r.code}`}`);
      return r.code === 0;
    } catch (e) {
      this.onError?.((e as Error).message);
      return false;
    }
  }

  async notifyReady(statusText: string): Promise<void> {
    this.ready = true;
    await this.send(['READY=1', `STATUS=${statusText}`]);
  }

  status(text: string): Promise<boolean> {
    return this.send([`STATUS=${text}`]);
  }

  stopping(): Promise<boolean> {
    return this.send(['STOPPING=1']);
  }

  /** Pings WATCHDOG=1 every third of the watchdog period while healthy() says so. */
  startWatchdog(healthy: () => boolean, statusText: () => string): void {
    if (!this.watchdogMs || this.timer) return;
    const every = Math.max(500, Math.floor(this.watchdogMs / 3));
    this.timer = setInterval(() => {
      if (!healthy()) return; // systemd restarts us when pings stop
      void this.send([...(this.ready ? ['READY=1'] : []), 'WATCHDOG=1', `STATUS=${statusText()}`]);
    }, every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
