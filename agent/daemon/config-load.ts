// The site config as the agent and the boot step read it: LANs and tunnel, plus the agent: section.
import { parseAgentConfig, type AgentConfig } from '../control/config.js';
import { readDocument } from '../io/files.js';
import type { Site } from '../policy/model.js';
import { hasErrors, type Problem } from '../policy/problems.js';
import { parseSite } from '../policy/site.js';

/** Marks the static boot table (its comment), so the agent knows it may remove it. */
export const BOOT_TABLE_MARK = 'connector-acl boot default-drop';

export interface LoadedConfig {
  doc: unknown;
  site: Site;
  agent: AgentConfig;
  problems: Problem[];
}

/** Reads and checks the site config and its agent section; problems (warnings too) are returned. */
export async function loadAgentConfig(configFile: string): Promise<{ config?: LoadedConfig; problems: Problem[] }> {
  const read = await readDocument(configFile);
  if (read.problems.length > 0) return { problems: read.problems };
  const site = parseSite(read.value, configFile);
  const agent = parseAgentConfig(read.value, configFile);
  const problems = [...site.problems, ...agent.problems];
  if (hasErrors(problems) || !site.site || !agent.config) return { problems };
  return { config: { doc: read.value, site: site.site, agent: agent.config, problems }, problems };
}

