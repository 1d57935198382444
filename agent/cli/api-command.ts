// `connector-acl api`: registered by main.ts. (Filled in by the api work.)
import type { Command } from 'commander';

export function register(_program: Command): void {}
