// `connector-acl boot` (run by connector-acl-boot.service before any interface is up): put a
// fail-closed ruleset in the kernel before the first packet can be forwarded. In order:
//   1. the last-known-good ruleset from state_dir (what the agent last enforced),
//   2. the default drop between the configured LANs (the site config compiled with no policies),
//   3. rules/default-drop.nft (static: no forwarding at all until the agent applies).
// Only nft is touched; policy routing waits for the agent (marked packets without a route to the
// tunnel are dropped, so via-Cloudflare traffic fails closed too).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatTableComment, marksOf, rulesetHash } from '../apply/engine.js';
import { DEFAULT_STATE_DIR } from '../control/config.js';
import { lower } from '../ir/lower.js';
import { NftClient } from '../nft/client.js';
import type { CommandRunner } from '../nft/exec.js';
import { render } from '../nft/render.js';
import { LastKnownGood } from './lkg.js';
import { BOOT_TABLE_MARK, loadAgentConfig } from './config-load.js';

export { BOOT_TABLE_MARK };

/** rules/default-drop.nft next to the installed code (repo root or /opt/connector-acl). */
export function defaultDropPath(): string {
  // dist/agent/daemon/boot.js (installed) or agent/daemon/boot.ts (tests): the first rules/ above.
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    dir = path.dirname(dir);
    const candidate = path.join(dir, 'rules', 'default-drop.nft');
    if (existsSync(candidate)) return candidate;
  }
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'rules', 'default-drop.nft');
}

export interface BootResult {
  loaded: 'last-known-good' | 'default-drop-lans' | 'default-drop-static' | 'none';
  messages: string[];
}

export async function bootLoad(options: { configFile: string; runner: CommandRunner; stateDir?: string; defaultDrop?: string }): Promise<BootResult> {
  const nft = new NftClient(options.runner);
  const messages: string[] = [];
  const loaded = await loadAgentConfig(options.configFile).catch(() => ({ config: undefined, problems: [] }));
  const stateDir = options.stateDir ?? loaded.config?.agent.stateDir ?? DEFAULT_STATE_DIR;

  const lkg = new LastKnownGood(stateDir);
  const script = await lkg.loadRuleset().catch((e: Error) => {
    messages.push(`last-known-good ruleset unreadable: ${e.message}`);
    return undefined;
  });
  if (script) {
    try {
      await nft.load(script);
      const hash = /hash=(\S+)/.exec(script.slice(0, 4096))?.[1];
      messages.push(`loaded the last-known-good ruleset ${hash ?? ''} from ${lkg.rulesetPath}`.replace('  ', ' '));
      return { loaded: 'last-known-good', messages };
    } catch (e) {
      messages.push(`the last-known-good ruleset did not load: ${(e as Error).message}`);
    }
  } else if (script === undefined) {
    messages.push(`no last-known-good ruleset in ${stateDir}`);
  }

  if (loaded.config) {
    const { site } = loaded.config;
    const ir = lower(site, []);
    const text = render(ir, { meta: formatTableComment({ hash: rulesetHash(ir), appliedAt: new Date().toISOString(), policies: 0, marks: marksOf(site) }) }).text;
    try {
      await nft.load(text);
      messages.push(`loaded the default drop between the ${site.lans.length} LANs of ${options.configFile} (table inet ${site.table})`);
      return { loaded: 'default-drop-lans', messages };
    } catch (e) {
      messages.push(`the default drop for the configured LANs did not load: ${(e as Error).message}`);
    }
  } else {
    messages.push(`${options.configFile} does not load; using the static default drop`);
  }

  const file = options.defaultDrop ?? defaultDropPath();
  try {
    await nft.load(await readFile(file, 'utf8'));
    messages.push(`loaded ${file}: no forwarding until the agent applies a ruleset`);
    return { loaded: 'default-drop-static', messages };
  } catch (e) {
    messages.push(`${file} did not load: ${(e as Error).message}`);
    return { loaded: 'none', messages };
  }
}
