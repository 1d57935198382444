// Reads the site config and its policies from disk and validates them in one step.
import path from 'node:path';
import { validate, type Validated } from '../policy/load.js';
import { isObject } from '../policy/fields.js';
import { readDocument, readPolicySource } from './files.js';

export const DEFAULT_CONFIG = '/etc/connector-acl/config.yaml';

export interface Inputs extends Validated {
  configFile: string;
  policySource?: string;
}

export async function loadInputs(configFile: string, policiesOverride?: string): Promise<Inputs> {
  const siteDoc = await readDocument(configFile);
  if (siteDoc.problems.length > 0) return { configFile, problems: siteDoc.problems, ok: false };
  const configured = isObject(siteDoc.value) && typeof siteDoc.value.policies === 'string' ? siteDoc.value.policies : undefined;
  // Relative policy paths in the config are relative to the config file, as an operator expects.
  const policySource = policiesOverride ?? (configured ? path.resolve(path.dirname(configFile), configured) : undefined);
  const docs = policySource ? await readPolicySource(policySource) : { value: [], problems: [] };
  const result = validate(siteDoc.value, configFile, docs.value ?? []);
  const problems = [...docs.problems, ...result.problems];
  return { ...result, problems, ok: result.ok && docs.problems.length === 0, configFile, policySource };
}
