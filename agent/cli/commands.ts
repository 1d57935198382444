// Extra subcommands live in their own files and register here, so main.ts stays wiring only.
import type { Command } from 'commander';

export type CommandRegistrar = (program: Command) => void;

export async function registerExtraCommands(program: Command): Promise<void> {
  for (const file of ['./api-command.js', './agent-command.js']) {
    try {
      const mod = (await import(file)) as { register?: CommandRegistrar };
      mod.register?.(program);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err;
    }
  }
}
