// The network-namespace site harness: build a Connector site, probe it, tear it down.
export * from './site.js';
export * from './probes.js';
export * from './cli.js';
export * from './exchange.js';
export * from './flows.js';
export { countProbe, probeCounts, probeTotal } from './stats.js';
export { RawAgent, RAW_PROTOCOLS } from './rawd.js';
export { run, check, runSync, inNs, CommandError, type RunResult, type RunOptions } from './exec.js';
export { HostAgent } from './agent.js';
