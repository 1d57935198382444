// Site config validation (issue 2 §2), good and bad input, with the exact messages.
import t, { type Test } from 'tap';
import { DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, DEFAULT_TUNNEL_MARK } from '../agent/policy/model.js';
import { formatProblem } from '../agent/policy/problems.js';
import { parseSite, type SiteResult } from '../agent/policy/site.js';

const lan = (i: number, extra: Record<string, unknown> = {}) => ({ id: `lan-${i}`, name: `LAN ${i}`, interface: `eth${i}`, ...extra });

function expectProblems(t: Test, doc: unknown, expected: { errors?: string[]; warnings?: string[] }): SiteResult {
  const r = parseSite(doc, 'config.yaml');
  const of = (s: string) => r.problems.filter((p) => p.severity === s).map(formatProblem);
  t.same(of('error'), expected.errors ?? [], 'errors');
  t.same(of('warning'), expected.warnings ?? [], 'warnings');
  t.equal(r.site !== undefined, (expected.errors ?? []).length === 0, expected.errors?.length ? 'rejected' : 'accepted');
  return r;
}

t.test('the full example of the issue, with defaults filled in', async (t) => {
  const r = expectProblems(t, {
    table: 'connector_acl',
    lans: [lan(1, { id: '6b1e2f0a9c8d4e11a2b3c4d5e6f70001', interface: 'eth1.10', subnets: ['198.18.1.0/24', '2001:db8:1::/64'] }), lan(2)],
    tunnel: { interface: 'cf0', gateway: '198.18.100.2', gateway6: '2001:db8:100::2', mark: '0x0cf00000', route_table: 207 },
    policies: '/etc/connector-acl/policies.yaml',
  }, {});
  t.equal(r.site?.lans[0].interface, 'eth1.10', 'VLAN sub-interfaces are fine');
  t.same(r.site?.lans[0].subnets.map((s) => s.text), ['198.18.1.0/24', '2001:db8:1::/64']);
  t.same(r.site?.tunnel, { interface: 'cf0', gateway: '198.18.100.2', gateway6: '2001:db8:100::2', mark: 0x0cf00000, routeTable: 207, rulePriority: DEFAULT_RULE_PRIORITY });
  t.equal(r.site?.policies, '/etc/connector-acl/policies.yaml');

  const min = expectProblems(t, { lans: [lan(1)] }, {});
  t.equal(min.site?.table, DEFAULT_TABLE);
  t.equal(min.site?.tunnel, undefined, 'no tunnel: fine until a policy goes via Cloudflare');
  t.equal(min.site?.lans[0].name, 'LAN 1');
  const tunnel = expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0' } }, {});
  t.same(tunnel.site?.tunnel, { interface: 'cf0', gateway: undefined, gateway6: undefined, mark: DEFAULT_TUNNEL_MARK, routeTable: DEFAULT_ROUTE_TABLE, rulePriority: DEFAULT_RULE_PRIORITY });
  const noName = expectProblems(t, { lans: [{ id: 'x', interface: 'eth9' }] }, {});
  t.equal(noName.site?.lans[0].name, 'x', 'the name defaults to the id');
});

t.test('unknown keys warn, at every level', async (t) => expectProblems(t, {
  lanz: 1, lans: [lan(1, { vlan: 5 })], tunnel: { interface: 'cf0', foo: 1 },
}, {
  warnings: ['config.yaml: lanz: unknown field, ignored', 'config.yaml: lans[0].vlan: unknown field, ignored', 'config.yaml: tunnel.foo: unknown field, ignored'],
}));

t.test('wrong types are errors', async (t) => {
  expectProblems(t, [1], { errors: ['config.yaml: the site config must be a mapping, not a list'] });
  expectProblems(t, null, { errors: ['config.yaml: the site config must be a mapping, not null'] });
  expectProblems(t, { table: 5, lans: [lan(1, { subnets: '1.2.3.0/24', name: 3 })], tunnel: 'cf0', policies: 7, agent: 'x' }, {
    errors: [
      'config.yaml: table: must be a string, not number 5',
      'config.yaml: lans[0].name: must be a string, not number 3',
      'config.yaml: lans[0].subnets: must be a list, not the string "1.2.3.0/24"',
      'config.yaml: tunnel: must be a mapping, not the string "cf0"',
      'config.yaml: policies: must be a string, not number 7',
      'config.yaml: agent: must be a mapping, not the string "x"',
    ],
  });
  expectProblems(t, { lans: 'x' }, { errors: ['config.yaml: lans: must be a list, not the string "x"'] });
  expectProblems(t, { lans: ['x'] }, { errors: ['config.yaml: lans[0]: must be a mapping with id, name and interface, not the string "x"'] });
  expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', mark: 'abc', route_table: 1.5 } }, {
    errors: ['config.yaml: tunnel.mark: must be an integer, not the string "abc"', 'config.yaml: tunnel.route_table: must be an integer, not number 1.5'],
  });
});

t.test('required fields', async (t) => {
  expectProblems(t, {}, { errors: ['config.yaml: lans: is required: list the LANs of this site'] });
  expectProblems(t, { lans: [{ name: 'x', id: '' }] }, {
    errors: ['config.yaml: lans[0].id: must not be empty', 'config.yaml: lans[0].interface: is required'],
  });
  expectProblems(t, { lans: [lan(1)], tunnel: { gateway: '198.18.100.2' } }, { errors: ['config.yaml: tunnel.interface: is required'] });
});

t.test('names the kernel and nft accept', async (t) => expectProblems(t, {
  table: 'my-table', lans: [lan(1, { id: 'a b', interface: 'this-name-is-too-long' }), lan(2, { interface: 'eth/2' })],
}, {
  errors: [
    'config.yaml: table: "my-table" is not a valid nft table name (letters, digits, _)',
    'config.yaml: lans[0].id: "a b" is not a valid LAN id (letters, digits, _ and -, up to 64)',
    'config.yaml: lans[0].interface: "this-name-is-too-long" is not a valid interface name (1–15 bytes, no whitespace, /, :, \" or \\)',
    'config.yaml: lans[1].interface: "eth/2" is not a valid interface name (1–15 bytes, no whitespace, /, :, \" or \\)',
  ],
}));

t.test('interface names are limited in bytes, not characters, and nft keywords cannot name the table', async (t) => expectProblems(t, {
  table: 'counter', lans: [lan(1, { interface: 'lanéééééééé' }), lan(2, { interface: 'lan"2' })],
}, {
  errors: [
    'config.yaml: table: "counter" is an nft keyword and cannot name a table; use e.g. connector_acl',
    'config.yaml: lans[0].interface: "lanéééééééé" is not a valid interface name (1–15 bytes, no whitespace, /, :, \" or \\)',
    'config.yaml: lans[1].interface: "lan"2" is not a valid interface name (1–15 bytes, no whitespace, /, :, \" or \\)',
  ],
}));

t.test('duplicate LAN ids and interfaces', async (t) => {
  expectProblems(t, { lans: [lan(1), lan(2, { id: 'lan-1' }), lan(3, { interface: 'eth1' })] }, {
    errors: [
      'config.yaml: lans[1].id: duplicate LAN id "lan-1" (also lans[0])',
      'config.yaml: lans[2].interface: duplicate interface "eth1" (also lans[0])',
    ],
  });
  // The index is the document's, also after an entry that did not parse.
  expectProblems(t, { lans: [{ name: 'bad' }, lan(1), lan(2, { id: 'lan-1' })] }, {
    errors: [
      'config.yaml: lans[0].id: is required',
      'config.yaml: lans[0].interface: is required',
      'config.yaml: lans[2].id: duplicate LAN id "lan-1" (also lans[1])',
    ],
  });
});

t.test('LAN subnets', async (t) => expectProblems(t, { lans: [lan(1, { subnets: ['198.18.1.1/24', 'x', 5, '198.18.1.0/24'] })] }, {
  errors: [
    'config.yaml: lans[0].subnets[1]: "x" is not an IPv4 or IPv6 address',
    'config.yaml: lans[0].subnets[2]: must be an address or prefix string, not number 5',
  ],
  warnings: ['config.yaml: lans[0].subnets[0]: "198.18.1.1/24" has host bits set; it is read as 198.18.1.0/24'],
}));

t.test('tunnel', async (t) => {
  t.test('reserved route tables 253, 254, 255', async (t) => {
    for (const [table, what] of [[253, 253], [254, 254], [255, 255]]) {
      expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', route_table: table } }, {
        errors: [`config.yaml: tunnel.route_table: ${what} is a reserved table (default/main/local)`],
      });
    }
    expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', route_table: 0 } }, {
      errors: ['config.yaml: tunnel.route_table: 0 is out of range (1–4294967294)'],
    });
    expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', route_table: 252 } }, {});
  });
  t.test('gateways of the right family, mark and priority in range, its own interface', async (t) => expectProblems(t, {
    lans: [lan(1)],
    tunnel: { interface: 'eth1', gateway: '2001:db8::1', gateway6: '1.2.3.4', mark: 0, rule_priority: 40000 },
  }, {
    errors: [
      'config.yaml: tunnel.interface: "eth1" is also a LAN interface; the tunnel needs its own',
      'config.yaml: tunnel.gateway: "2001:db8::1" is not an IPv4 address',
      'config.yaml: tunnel.gateway6: "1.2.3.4" is not an IPv6 address',
      'config.yaml: tunnel.mark: 0 is out of range (1–4294967295)',
      'config.yaml: tunnel.rule_priority: 40000 is out of range (1–32765)',
    ],
  }));
  t.test('a gateway is an address, not a prefix', async (t) => expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', gateway: '198.18.100.0/24' } }, {
    errors: ['config.yaml: tunnel.gateway: "198.18.100.0/24" is not an IPv4 address'],
  }));
  t.test('integers as strings (hex too)', async (t) => {
    const r = expectProblems(t, { lans: [lan(1)], tunnel: { interface: 'cf0', mark: '0x10', route_table: '300', rule_priority: 5 } }, {});
    t.same([r.site?.tunnel?.mark, r.site?.tunnel?.routeTable, r.site?.tunnel?.rulePriority], [16, 300, 5]);
  });
});

t.test('the conntrack mark may not share bits with the tunnel mark', async (t) => expectProblems(t, {
  lans: [lan(1)], tunnel: { interface: 'cf0', mark: '0x0cf00000' }, conntrack_mark: '0x00800000',
}, {
  errors: ['config.yaml: conntrack_mark: 0x800000 shares bits with tunnel.mark 0xcf00000; pick bits the tunnel mark does not use'],
}));
