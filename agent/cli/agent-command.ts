// `connector-acl agent`: registered by main.ts. (Filled in by the agent work.)
import type { Command } from 'commander';

export function register(_program: Command): void {}
