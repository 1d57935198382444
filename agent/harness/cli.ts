// Running the connector-acl CLI inside a site's Connector namespace, as an operator would:
//   ip netns exec <connector> node dist/agent/cli/main.js apply -c site.yaml -p policies.yaml
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import type { RunResult } from './exec.js';
import type { Site } from './site.js';

/** The repository root (the directory whose package.json is connector-acl's), from src or dist. */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'connector-acl') return dir;
      } catch {
        // keep looking
      }
    }
    dir = path.dirname(dir);
  }
  throw new Error('cannot find the connector-acl repository root');
}

/** The compiled CLI (built by `npm run build`). */
export const cliPath = (): string => path.join(repoRoot(), 'dist', 'agent', 'cli', 'main.js');

export const cliAvailable = (): boolean => existsSync(cliPath());

/** Runs the CLI with `args` inside the site's Connector namespace. */
export function runCli(site: Site, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  return site.exec(site.connector, [process.execPath, cliPath(), ...args], { timeoutMs, cwd: repoRoot() });
}

/** Writes policies (API-shaped objects) as YAML; returns the file path. */
export async function writePolicies(dir: string, policies: unknown[], name = 'policies.yaml'): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, name);
  await writeFile(file, name.endsWith('.json') ? JSON.stringify(policies, null, 2) : YAML.stringify(policies));
  return file;
}

/** `apply -c site -p policies` in the Connector namespace. */
export const applyPolicies = (site: Site, siteFile: string, policies: string): Promise<RunResult> =>
  runCli(site, ['apply', '-c', siteFile, '-p', policies]);

/** The engine's table as nft prints it (stateless: no counter values), or undefined when absent. */
export async function listEngineTable(site: Site, table = 'connector_acl'): Promise<string | undefined> {
  const r = await site.exec(site.connector, ['nft', '-s', 'list', 'table', 'inet', table], { timeoutMs: 10_000 });
  return r.code === 0 ? r.stdout : undefined;
}

/** The whole ruleset of the Connector namespace (stateless). */
export async function listConnectorRuleset(site: Site): Promise<string> {
  const r = await site.exec(site.connector, ['nft', '-s', 'list', 'ruleset'], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`nft list ruleset: ${r.stderr}`);
  return r.stdout;
}
