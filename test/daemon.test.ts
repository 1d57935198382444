// The daemon's parts that need no kernel: crash-safe files, last-known-good, the boot fallbacks,
// sd_notify, metrics, status lines, link event parsing, the file watcher and the serial queue;
// and `systemd-analyze verify` on the units when systemd is here.
import { spawn, spawnSync } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { writeFileAtomic } from '../agent/daemon/atomic.js';
import { bootLoad, defaultDropPath } from '../agent/daemon/boot.js';
import { linkEventName } from '../agent/daemon/drift.js';
import { FileSource } from '../agent/daemon/file-source.js';
import { claimStateDir, LastKnownGood, PID_FILE } from '../agent/daemon/lkg.js';
import { AgentMetrics } from '../agent/daemon/metrics.js';
import { SystemdNotifier } from '../agent/daemon/notify.js';
import { SerialQueue } from '../agent/daemon/reconciler.js';
import { agentStatusLines, newStatus } from '../agent/daemon/status.js';
import type { CommandRunner, ProcessResult, RunOptions } from '../agent/nft/exec.js';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

async function tmp(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cacl-daemon-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Records every command; answers with `answer(argv, input)` (default: exit 0). */
class RecordingRunner implements CommandRunner {
  readonly calls: { argv: readonly string[]; input?: string }[] = [];
  constructor(private readonly answer: (argv: readonly string[], input?: string) => Partial<ProcessResult> = () => ({})) {}
  async run(argv: readonly string[], options: RunOptions = {}): Promise<ProcessResult> {
    this.calls.push({ argv, input: options.input });
    return { argv, code: 0, signal: null, stdout: '', stderr: '', ...this.answer(argv, options.input) };
  }
}

const SITE = {
  table: 'connector_acl',
  lans: [
    { id: 'lan1', name: 'LAN 1', interface: 'lan1' },
    { id: 'lan2', name: 'LAN 2', interface: 'lan2' },
  ],
};

t.test('writeFileAtomic replaces the whole file and leaves no temp files', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'sub', 'state.json');
  await writeFileAtomic(file, 'one');
  await writeFileAtomic(file, 'two', 0o600);
  t.equal(await readFile(file, 'utf8'), 'two');
  t.equal((await stat(file)).mode & 0o777, 0o600);
  t.same(await readdir(path.join(dir, 'sub')), ['state.json']);
});

t.test('last-known-good: round trip, stale temp files swept, a damaged file is an error', async (t) => {
  const dir = await tmp(t);
  const lkg = new LastKnownGood(dir);
  t.equal(await lkg.load(), undefined, 'nothing saved yet');
  await lkg.save({ rulesetHash: 'abc', table: 'connector_acl', policyCount: 1, source: 'file', documents: [{ file: 'p.yaml', content: [{ id: 'x' }] }] }, 'table inet connector_acl {\n}\n');
  const e = await lkg.load();
  t.equal(e?.rulesetHash, 'abc');
  t.same(e?.documents, [{ file: 'p.yaml', content: [{ id: 'x' }] }]);
  t.equal(await lkg.loadRuleset(), 'table inet connector_acl {\n}\n');
  await writeFile(path.join(dir, '.lkg.json.999999.0badc0de.tmp'), 'half');
  t.same(await lkg.sweep(), ['.lkg.json.999999.0badc0de.tmp']);
  await writeFile(lkg.jsonPath, '{"format": 7}');
  await t.rejects(lkg.load(), /not a last-known-good file/);
});

t.test('one agent per state_dir: a live agent blocks a second, a stale pid file is taken over', async (t) => {
  const dir = await tmp(t);
  await writeFile(path.join(dir, PID_FILE), '999999999\n');
  const lock = await claimStateDir(dir);
  t.equal((await readFile(path.join(dir, PID_FILE), 'utf8')).trim(), String(process.pid), 'stale pid file taken over');
  await lock.release();
  await t.rejects(readFile(path.join(dir, PID_FILE)), 'released');
  const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 10000)', 'agent'], { stdio: 'ignore' });
  t.teardown(() => other.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 100));
  await writeFile(path.join(dir, PID_FILE), `${other.pid}\n`);
  await t.rejects(claimStateDir(dir), /another agent \(pid \d+\) is running/);
});

t.test('connector-acl boot: last-known-good, else the default drop between the LANs, else the static file', async (t) => {
  const dir = await tmp(t);
  const stateDir = path.join(dir, 'state');
  const config = path.join(dir, 'site.yaml');
  await writeFile(config, YAML.stringify({ ...SITE, agent: { source: 'file', state_dir: stateDir } }));
  const nftLoads = (r: RecordingRunner) => r.calls.filter((c) => c.argv.join(' ') === 'nft -f -').map((c) => c.input ?? '');

  const noLkg = new RecordingRunner();
  const a = await bootLoad({ configFile: config, runner: noLkg });
  t.equal(a.loaded, 'default-drop-lans');
  t.match(nftLoads(noLkg)[0], /counter drop comment "default drop: LAN 1 -> LAN 2"/);
  t.match(nftLoads(noLkg)[0], /policies=0/);

  await new LastKnownGood(stateDir).save({ rulesetHash: 'feed', table: 'connector_acl', policyCount: 3, source: 'local', documents: [] }, '# lkg\ntable inet connector_acl { comment "connector-acl hash=feed" }\n');
  const withLkg = new RecordingRunner();
  const b = await bootLoad({ configFile: config, runner: withLkg });
  t.equal(b.loaded, 'last-known-good');
  t.match(b.messages.join('\n'), /feed/);
  t.same(nftLoads(withLkg), ['# lkg\ntable inet connector_acl { comment "connector-acl hash=feed" }\n']);

  // The saved ruleset is refused (e.g. an interface type this kernel lacks): fall back to the LANs' default drop.
  const refusing = new RecordingRunner((_argv, input) => (input?.startsWith('# lkg') ? { code: 1, stderr: 'Error: Could not process rule' } : {}));
  t.equal((await bootLoad({ configFile: config, runner: refusing })).loaded, 'default-drop-lans');

  // No readable config, no state: the static file, which stops all forwarding.
  const none = new RecordingRunner();
  const c = await bootLoad({ configFile: path.join(dir, 'missing.yaml'), runner: none, stateDir: path.join(dir, 'empty') });
  t.equal(c.loaded, 'default-drop-static');
  const staticText = await readFile(defaultDropPath(), 'utf8');
  t.same(nftLoads(none), [staticText]);
  t.match(staticText, /type filter hook forward priority filter; policy drop;/);
  t.match(staticText, /connector-acl boot default-drop/);
});

t.test('the static default-drop ruleset parses (nft -c) when nft can check here', async (t) => {
  const r = spawnSync('nft', ['-c', '-f', defaultDropPath()], { encoding: 'utf8' });
  if (r.error || /Operation not permitted|not supported/i.test(r.stderr)) return t.skip(`nft -c not usable here: ${r.error?.message ?? r.stderr.trim()}`);
  t.equal(r.status, 0, r.stderr);
});

t.test('sd_notify through systemd-notify: silent without NOTIFY_SOCKET; READY, STATUS, watchdog period', async (t) => {
  const off = new RecordingRunner();
  const n0 = new SystemdNotifier(off, {});
  await n0.notifyReady('x');
  t.equal(off.calls.length, 0);
  t.equal(n0.watchdogMs, undefined);

  const on = new RecordingRunner();
  const n = new SystemdNotifier(on, { NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) });
  t.equal(n.watchdogMs, 30_000);
  await n.notifyReady('3 policies');
  t.same(on.calls[0].argv, ['systemd-notify', `--pid=${process.pid}`, 'READY=1', 'STATUS=3 policies']);
  const other = new SystemdNotifier(on, { NOTIFY_SOCKET: '/x', WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' });
  t.equal(other.watchdogMs, undefined, 'a watchdog meant for another pid is ignored');
});

t.test('metrics: names, per-policy counters read lazily and cached', async (t) => {
  let reads = 0;
  const m = new AgentMetrics(async () => {
    reads++;
    return new Map([['pol_p1', { name: 'pol_p1', comment: 'abcd0123 Web "front"', packets: 12, bytes: 3400 }]]);
  });
  m.setSourceState('unreachable');
  m.setRuleset('0123456789abcdef', 1);
  m.driftRepairs.inc({ what: 'table' });
  const text = await m.registry.metrics();
  await m.registry.metrics();
  t.equal(reads, 1, 'two scrapes within a second read the nft counters once');
  for (const re of [
    /^connector_acl_policies_enforced 1$/m,
    /^connector_acl_source_state\{state="unreachable"\} 1$/m,
    /^connector_acl_source_up 0$/m,
    /^connector_acl_policy_packets_total\{policy_id="p1",policy_name="Web \\"front\\""\} 12$/m,
    /^connector_acl_policy_bytes_total\{policy_id="p1",policy_name="Web \\"front\\""\} 3400$/m,
    /^connector_acl_drift_repairs_total\{what="table"\} 1$/m,
    /^connector_acl_ruleset_info\{hash="0123456789abcdef"\} 1$/m,
    /^# TYPE connector_acl_apply_duration_seconds histogram$/m,
    /^connector_acl_apply_failures_total\{reason="invalid"\} 0$/m,
  ]) t.match(text, re);
});

t.test('status lines for connector-acl status', async (t) => {
  t.same(agentStatusLines({ stateDir: '/x', file: '/x/status.json', running: false }), [], 'no agent ever ran: nothing to say');
  const s = newStatus('remote', '/etc/connector-acl/config.yaml', new Date('2026-01-01T00:00:00Z'));
  s.source.state = 'unreachable';
  s.source.detail = 'ECONNREFUSED';
  s.enforcing = 'last-known-good';
  s.lastApply = { hash: 'aaaabbbbccccdddd', at: '2026-01-01T00:00:00Z', durationMs: 42.4, policies: 7, origin: 'last-known-good' };
  s.policies = 7;
  s.driftRepairs = 2;
  s.lastError = { at: '2026-01-01T00:00:30Z', kind: 'control-plane unreachable', message: 'ECONNREFUSED' };
  const lines = agentStatusLines({ stateDir: '/x', file: '/x/status.json', running: true, status: s }, Date.parse('2026-01-01T00:01:00Z'));
  t.match(lines[0], /^agent: running \(pid \d+\)$/);
  t.match(lines.join('\n'), /source: remote, unreachable \(ECONNREFUSED\); enforcing last-known-good/);
  t.match(lines.join('\n'), /last apply: ruleset aaaabbbbccccdddd, 7 policies, 42 ms, .* \(60s ago\)/);
  t.match(lines.join('\n'), /policies: 7; drift repairs: 2/);
  t.match(lines.join('\n'), /last error: control-plane unreachable: ECONNREFUSED \(2026-01-01T00:00:30Z \(30s ago\)\)/);
  const dead = agentStatusLines({ stateDir: '/x', file: '/x/status.json', running: false, status: s }, Date.parse('2026-01-01T00:01:00Z'));
  t.match(dead[0], /NOT RUNNING/);
});

t.test('link events: interface names from ip -o monitor link', async (t) => {
  t.equal(linkEventName('3: lan1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP'), 'lan1');
  t.equal(linkEventName('Deleted 7: cf0@if6: <BROADCAST,MULTICAST> mtu 1500'), 'cf0');
  t.equal(linkEventName('12: eth1.10@eth1: <BROADCAST> mtu 1500'), 'eth1.10');
  t.equal(linkEventName('garbage'), undefined);
});

t.test('file source: the initial set, debounced changes (last one wins), parse errors as problems', async (t) => {
  const dir = await tmp(t);
  const file = path.join(dir, 'policies.yaml');
  await writeFile(file, YAML.stringify([{ id: 'a' }]));
  const seen: { ids?: string[]; errors: number }[] = [];
  let notify: (() => void) | undefined;
  const source = new FileSource(file, async ({ documents, problems }) => {
    seen.push({ ids: documents?.flatMap((d) => (d.content as { id: string }[]).map((x) => x.id)), errors: problems.filter((p) => p.severity === 'error').length });
    notify?.();
  }, { debounceMs: 100, pollMs: 200 });
  t.teardown(() => source.stop());
  await source.start();
  t.same(seen, [{ ids: ['a'], errors: 0 }]);
  const next = () => new Promise<void>((r) => (notify = r));
  let got = next();
  await writeFile(file, YAML.stringify([{ id: 'b' }]));
  await writeFile(file, YAML.stringify([{ id: 'c' }]));
  await got;
  t.same(seen.at(-1), { ids: ['c'], errors: 0 }, 'two quick writes, one read of the last');
  got = next();
  await writeFile(`${file}.tmp`, 'key: [unclosed');
  await (await import('node:fs/promises')).rename(`${file}.tmp`, file);
  await got;
  t.same(seen.at(-1), { ids: undefined, errors: 1 }, 'a broken file is delivered as problems, not as a set');
});

t.test('the serial queue never runs two tasks at once, and a failure does not stop it', async (t) => {
  const q = new SerialQueue();
  let running = 0;
  let max = 0;
  const order: number[] = [];
  const task = (n: number, fail = false) => q.run(async () => {
    running++;
    max = Math.max(max, running);
    await new Promise((r) => setTimeout(r, 5));
    order.push(n);
    running--;
    if (fail) throw new Error('boom');
    return n;
  });
  const results = await Promise.allSettled([task(1), task(2, true), task(3)]);
  t.equal(max, 1);
  t.same(order, [1, 2, 3]);
  t.same(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
  t.notOk(q.busy);
});

t.test('systemd units', async (t) => {
  const units = ['connector-acl-boot.service', 'connector-acl.service'];
  const text = Object.fromEntries(await Promise.all(units.map(async (u) => [u, await readFile(path.join(repo, 'systemd', u), 'utf8')])));
  const boot = text['connector-acl-boot.service'];
  for (const line of ['Type=oneshot', 'DefaultDependencies=no', 'Wants=network-pre.target', 'RemainAfterExit=yes']) t.match(boot, new RegExp(`^${line}$`, 'm'));
  t.match(boot, /^Before=network-pre\.target/m);
  const agent = text['connector-acl.service'];
  for (const line of ['Type=notify', 'NotifyAccess=all', 'Restart=on-failure', 'CapabilityBoundingSet=CAP_NET_ADMIN', 'AmbientCapabilities=CAP_NET_ADMIN',
    'ProtectSystem=strict', 'StateDirectory=connector-acl', 'NoNewPrivileges=yes', 'PrivateTmp=yes', 'ProtectHome=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK']) t.match(agent, new RegExp(`^${line}$`, 'm'));
  t.match(agent, /^WatchdogSec=\d+s$/m);

  const probe = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  if (probe.error) return t.skip('systemd-analyze is not installed');
  // verify wants the ExecStart binary to exist: point the units at a stand-in.
  const dir = await tmp(t);
  const stub = path.join(dir, 'connector-acl');
  await writeFile(stub, '#!/bin/sh\nexit 0\n');
  await chmod(stub, 0o755);
  const files: string[] = [];
  for (const u of units) {
    const f = path.join(dir, u);
    await writeFile(f, text[u].replaceAll('/usr/local/bin/connector-acl', stub));
    files.push(f);
  }
  const r = spawnSync('systemd-analyze', ['verify', ...files], { encoding: 'utf8' });
  t.equal(r.status, 0, 'systemd-analyze verify', { stderr: r.stderr });
  t.equal(r.stderr.trim(), '', 'no warnings');
});
