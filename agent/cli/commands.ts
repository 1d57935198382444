// Extra subcommands live in their own files and register here, so main.ts stays wiring only.
import type { Command } from 'commander';
import { register as registerAgent } from './agent-command.js';
import { register as registerApi } from './api-command.js';
import { register as registerExplain } from './explain-command.js';

export function registerExtraCommands(program: Command): void {
  registerExplain(program);
  registerApi(program);
  registerAgent(program);
}
