// Pure assembly of a site and its policies from parsed documents: the one entry point for
// `validate`, `compile` and `apply`, so every path reports the same problems.
import { parsePolicies, type PolicyDocument } from './acl.js';
import type { Policy, Site } from './model.js';
import { hasErrors, type Problem } from './problems.js';
import { parseSite } from './site.js';

export interface Validated {
  site?: Site;
  policies?: Policy[];
  problems: Problem[];
  ok: boolean;
}

export function validate(siteDoc: unknown, siteFile: string, policyDocs: readonly PolicyDocument[]): Validated {
  const siteResult = parseSite(siteDoc, siteFile);
  if (!siteResult.site) return { problems: siteResult.problems, ok: false };
  const result = parsePolicies(policyDocs, siteResult.site);
  const problems = [...siteResult.problems, ...result.problems];
  const ok = !hasErrors(problems);
  return { site: siteResult.site, policies: ok ? result.policies : undefined, problems, ok };
}
