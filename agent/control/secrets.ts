// Credentials from files: an API token or an auth key, in a file only its owner may read.
import { open } from 'node:fs/promises';
import type { LocalApiConfig, RemoteConfig } from './config.js';

/** Credentials a client sends: `Authorization: Bearer`, or `X-Auth-Email` + `X-Auth-Key`. */
export type RemoteCredentials = { token: string } | { email: string; key: string };

/** Credentials the local API accepts (either or both methods). */
export interface ApiCredentials {
  /** Accepted as `Authorization: Bearer <token>`. */
  token?: string;
  /** With `key`: accepted as `X-Auth-Email` + `X-Auth-Key`. */
  email?: string;
  key?: string;
}

/** A credentials file is group- or world-accessible, missing, unreadable or empty. */
export class SecretFileError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'SecretFileError';
  }
}

/**
 * Reads a secret (token, key) from a file that only its owner may access: refuses, clearly, a file
 * with any group or world permission bit (mode & 0o077), an empty one and one with several lines.
 * Surrounding whitespace (the trailing newline of `echo … > file`) is removed. The mode is checked
 * on the open file, so a swap between check and read cannot slip through.
 */
export async function readSecretFile(file: string): Promise<string> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SecretFileError(file, code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (e as Error).message);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new SecretFileError(file, 'is not a regular file');
    if ((st.mode & 0o077) !== 0) {
      throw new SecretFileError(file,
        `is accessible by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); ` +
        `credentials must be readable by their owner only: chmod 600 ${file}`);
    }
    if (st.size > 64 * 1024) throw new SecretFileError(file, 'is too large for a secret');
    const text = (await handle.readFile('utf8')).trim();
    if (text === '') throw new SecretFileError(file, 'is empty');
    if (/[\r\n]/.test(text)) throw new SecretFileError(file, 'holds more than one line; put only the secret in it');
    return text;
  } finally {
    await handle.close();
  }
}

/** The credentials `agent.remote` names, read from their files (throws SecretFileError). */
export async function readRemoteCredentials(remote: Pick<RemoteConfig, 'apiTokenFile' | 'email' | 'authKeyFile'>): Promise<RemoteCredentials> {
  if (remote.apiTokenFile) return { token: await readSecretFile(remote.apiTokenFile) };
  if (remote.email && remote.authKeyFile) return { email: remote.email, key: await readSecretFile(remote.authKeyFile) };
  throw new Error('no credentials configured: api_token_file, or email with auth_key_file');
}

/** The credentials `agent.local_api.auth` names, read from their files (throws SecretFileError). */
export async function readLocalApiCredentials(local: Pick<LocalApiConfig, 'auth'>): Promise<ApiCredentials> {
  const { apiTokenFile, email, authKeyFile } = local.auth;
  const token = apiTokenFile ? await readSecretFile(apiTokenFile) : undefined;
  const key = authKeyFile ? await readSecretFile(authKeyFile) : undefined;
  return { token, email: key ? email : undefined, key };
}
