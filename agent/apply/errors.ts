// Failures by what the operator must do about them; each maps to a documented exit code.

/** Bad input: nothing was applied. Exit 1. */
export class InputError extends Error {
  readonly exitCode = 1;
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}

/** The kernel refused or the result did not verify: the previous ruleset is in force. Exit 2. */
export class ApplyError extends Error {
  readonly exitCode = 2;
  constructor(message: string, readonly details: string[] = []) {
    super(message);
    this.name = 'ApplyError';
  }
}

/** The environment is missing something: nft, ip, CAP_NET_ADMIN. Exit 3. */
export class EnvironmentError extends Error {
  readonly exitCode = 3;
  constructor(message: string) {
    super(message);
    this.name = 'EnvironmentError';
  }
}

export const EXIT = { ok: 0, invalid: 1, applyFailed: 2, environment: 3 } as const;
