// The two-step update (agent/nft/update.ts), pure: what the prepare and commit scripts hold for
// a live table rendered from one policy set and a new set. The kernel side is test/kernel-swap.
import t from 'tap';
import { lower } from '../agent/ir/lower.js';
import { render } from '../agent/nft/render.js';
import { canUpdate, liveObjectsFromText, nextGeneration, updateScripts, type LiveObjects } from '../agent/nft/update.js';
import { validate } from '../agent/policy/load.js';

const site = {
  lans: [
    { id: 'L1', name: 'LAN 1', interface: 'lan1', subnets: ['198.18.1.0/24'] },
    { id: 'L2', name: 'LAN 2', interface: 'lan2', subnets: ['198.18.2.0/24'] },
    { id: 'L3', name: 'LAN 3', interface: 'lan3', subnets: ['198.18.3.0/24'] },
  ],
};
const web = { id: 'web', name: 'web', forward_locally: true, protocols: ['tcp'], lan_1: { lan_id: 'L1' }, lan_2: { lan_id: 'L2', ports: [443] } };
const dns = { id: 'dns', name: 'dns', forward_locally: true, protocols: ['udp'], lan_1: { lan_id: 'L1' }, lan_2: { lan_id: 'L3', ports: [53] } };
const ssh = { id: 'ssh', name: 'ssh', forward_locally: true, protocols: ['tcp'], lan_1: { lan_id: 'L2' }, lan_2: { lan_id: 'L3', ports: [22] } };

function rendered(acls: object[], generation: number) {
  const v = validate(site, 'site.yaml', [{ file: 'acls.json', content: acls }]);
  if (!v.ok) throw new Error(JSON.stringify(v.problems));
  return render(lower(v.site!, v.policies!), { meta: `connector-acl hash=x gen=${generation}`, generation });
}

/** What `nft list table` would show for a script we loaded: our own block headers and comments. */
const liveOf = (text: string): LiveObjects => liveObjectsFromText(text.slice(text.indexOf('table inet connector_acl {\n')));

t.test('only a table carrying the metadata counter is updated in place; generations count up', async (t) => {
  const first = rendered([web, dns], 1);
  const live = liveOf(first.text);
  t.ok(canUpdate(live));
  t.equal(nextGeneration(live), 2);
  t.notOk(canUpdate(liveObjectsFromText('table inet connector_acl {\n\tchain forward {\n\t}\n}\n')), 'the boot default-drop is replaced whole');
});

t.test('prepare adds only the next generation maps and chains that do not exist yet', async (t) => {
  const live = liveOf(rendered([web, dns], 1).text);
  const next = rendered([web, ssh], 2);
  const { prepare, preparedMaps } = updateScripts('connector_acl', next, live, { keepUnchangedPolicyChains: true });
  t.ok(preparedMaps.length > 0 && preparedMaps.every((m) => /_g2$/.test(m)), `prepared: ${preparedMaps.join(', ')}`);
  t.match(prepare.text, /\tchain pol_ssh \{\n\t\}/, 'the new policy chain is declared (empty) so the new maps can jump to it');
  t.notMatch(prepare.text, /\tchain pol_web \{/, 'an existing chain is not redeclared');
  t.notMatch(prepare.text, /flush|delete|hook/, 'prepare changes nothing packets see');
});

t.test('commit switches rules over, deletes what is gone, and leaves unchanged policies alone', async (t) => {
  const live = liveOf(rendered([web, dns], 1).text);
  const { commit } = updateScripts('connector_acl', rendered([web, ssh], 2), live, { keepUnchangedPolicyChains: true });
  const lines = commit.text.split('\n');
  t.ok(lines.includes('flush chain inet connector_acl forward'), 'base chains are refilled');
  t.notOk(lines.includes('flush chain inet connector_acl pol_web'), 'the unchanged policy chain is not touched');
  t.ok(lines.includes('delete chain inet connector_acl pol_dns'), 'the removed policy chain goes');
  t.ok(lines.includes('delete counter inet connector_acl pol_dns'), 'and its counter');
  t.notOk(lines.includes('delete counter inet connector_acl pol_web'), 'the unchanged policy keeps its counter (and its values)');
  t.ok(lines.includes('delete counter inet connector_acl acl_ruleset'), 'the metadata is rewritten');
  t.ok(lines.some((l) => /^delete map inet connector_acl l_1_2_4p_g1$/.test(l)), 'the previous generation maps go');
  t.ok(lines.includes('flush map inet connector_acl lan_pairs'), 'the dispatch map is refilled in place');
  t.notOk(lines.some((l) => /^(flush|delete) (set|map) inet connector_acl l4_(ports|icmp)$/.test(l)), 'the constant sets are never touched');
  // Order matters inside the transaction: rules go before the maps and chains they reference.
  const firstDelete = lines.findIndex((l) => l.startsWith('delete '));
  const lastFlush = lines.map((l) => l.startsWith('flush chain')).lastIndexOf(true);
  t.ok(lastFlush < firstDelete, 'every chain is flushed before anything is deleted');
  t.ok(lines.findIndex((l) => l.startsWith('delete map')) < lines.findIndex((l) => l.startsWith('delete chain')), 'maps (whose elements jump to chains) go before chains');
  t.match(commit.text, /vmap @l_1_2_4p_g2/, 'the refilled rules name the new generation');
});

t.test('when the marks change, every policy chain is rewritten', async (t) => {
  const live = liveOf(rendered([web], 1).text);
  const { commit } = updateScripts('connector_acl', rendered([web], 2), live, { keepUnchangedPolicyChains: false });
  t.ok(commit.text.split('\n').includes('flush chain inet connector_acl pol_web'));
});
