// Every validation rule for policies (issue 2 §3), good and bad input, with the exact messages
// `connector-acl validate` prints (formatProblem).
import t, { type Test } from 'tap';
import { derivedId } from '../agent/policy/acl.js';
import { validate, type Validated } from '../agent/policy/load.js';
import { formatProblem } from '../agent/policy/problems.js';

const SITE = {
  lans: [
    { id: 'lan-3', name: 'LAN 3', interface: 'eth3', subnets: ['198.18.3.0/24', '2001:db8:3::/64'] },
    { id: 'lan-4', name: 'LAN 4', interface: 'eth4', subnets: ['198.18.4.0/24'] },
    { id: 'lan-5', name: 'LAN 5', interface: 'eth5' },
  ],
  tunnel: { interface: 'cf0' },
};
const ID = 'a0000000000000000000000000000002';
const AT = `acls.json: policy "PIN Pad - Cash Register" (${ID})`;

type Acl = Record<string, unknown>;
/** The seed's PIN pad example, locally forwarded; `extra` replaces top-level fields. */
const acl = (extra: Acl = {}): Acl => ({
  id: ID,
  name: 'PIN Pad - Cash Register',
  lan_1: { lan_id: 'lan-3' },
  lan_2: { lan_id: 'lan-4' },
  protocols: ['tcp'],
  forward_locally: true,
  ...extra,
});
const lan2 = (extra: Acl): Acl => acl({ lan_2: { lan_id: 'lan-4', ...extra } });
const lan1 = (extra: Acl): Acl => acl({ lan_1: { lan_id: 'lan-3', ...extra } });

function run(content: unknown, site: unknown = SITE): Validated {
  return validate(site, 'site.yaml', [{ file: 'acls.json', content }]);
}

/** Asserts the exact errors and warnings, in order. */
function expectProblems(t: Test, content: unknown, expected: { errors?: string[]; warnings?: string[] }, site?: unknown): Validated {
  const v = run(content, site);
  const of = (s: string) => v.problems.filter((p) => p.severity === s).map(formatProblem);
  t.same(of('error'), expected.errors ?? [], 'errors');
  t.same(of('warning'), expected.warnings ?? [], 'warnings');
  t.equal(v.ok, (expected.errors ?? []).length === 0, expected.errors?.length ? 'rejected' : 'accepted');
  return v;
}

t.test('a valid policy passes without problems', async (t) => {
  const v = expectProblems(t, [acl()], {});
  t.equal(v.policies?.length, 1);
  t.same(v.policies?.[0].origin, { lanId: 'lan-3', subnets: [], ports: [] });
});

t.test('ports: integers 1–65535', async (t) => {
  t.test('0', async (t) => expectProblems(t, [lan2({ ports: [0] })], {
    errors: [`${AT}: lan_2.ports[0]: 0 is not a valid port (valid ports are 1–65535)`],
  }));
  t.test('65536', async (t) => expectProblems(t, [lan2({ ports: [65536] })], {
    errors: [`${AT}: lan_2.ports[0]: 65536 is out of range (valid ports are 1–65535)`],
  }));
  t.test('non-integer', async (t) => expectProblems(t, [lan2({ ports: [1.5] })], {
    errors: [`${AT}: lan_2.ports[0]: number 1.5 is not a port number`],
  }));
  t.test('a string inside the list', async (t) => expectProblems(t, [lan2({ ports: ['80'] })], {
    errors: [`${AT}: lan_2.ports[0]: the string "80" is not a port number`],
  }));
  t.test('not a list', async (t) => expectProblems(t, [lan2({ ports: 80 })], {
    errors: [`${AT}: lan_2.ports: must be a list, not number 80`],
  }));
  t.test('edges 1 and 65535 are valid, lan_1 ports too', async (t) => {
    const v = expectProblems(t, [acl({ lan_1: { lan_id: 'lan-3', ports: [65535] }, lan_2: { lan_id: 'lan-4', ports: [1, 443] } })], {});
    t.same(v.policies?.[0].origin.ports, [{ from: 65535, to: 65535 }]);
    t.same(v.policies?.[0].destination.ports, [{ from: 1, to: 1 }, { from: 443, to: 443 }]);
  });
});

t.test('ports in the dashboard string form "2,5,6,9-14"', async (t) => {
  t.test('valid', async (t) => {
    const v = expectProblems(t, [lan2({ ports: '2,5,6,9-14' })], {});
    t.same(v.policies?.[0].destination.ports, [{ from: 2, to: 2 }, { from: 5, to: 6 }, { from: 9, to: 14 }], 'sorted, adjacent ports joined');
  });
  t.test('spaces are fine', async (t) => {
    const v = expectProblems(t, [lan2({ ports: ' 443 , 8000 - 8080 ' })], {});
    t.same(v.policies?.[0].destination.ports, [{ from: 443, to: 443 }, { from: 8000, to: 8080 }]);
  });
  t.test('every bad item is reported', async (t) => expectProblems(t, [lan2({ ports: '2,,x,0,9-x,14-9,70000' })], {
    errors: [
      `${AT}: lan_2.ports: "2,,x,0,9-x,14-9,70000": empty item in the port list`,
      `${AT}: lan_2.ports[2]: the string "x" is not a port number`,
      `${AT}: lan_2.ports[3]: 0 is not a valid port (valid ports are 1–65535)`,
      `${AT}: lan_2.ports[4]: "9-x" is not a port range: write "start-end", e.g. "8080-9000"`,
      `${AT}: lan_2.ports[5]: "14-9": range start is above its end`,
      `${AT}: lan_2.ports[6]: 70000 is out of range (valid ports are 1–65535)`,
    ],
  }));
});

t.test('port_ranges: "a-b" with 1 ≤ a ≤ b ≤ 65535', async (t) => {
  t.test('reversed (the issue\'s example message)', async (t) => expectProblems(t, [lan2({ port_ranges: ['9000-8080'] })], {
    errors: [`${AT}: lan_2.port_ranges[0]: "9000-8080": range start is above its end`],
  }));
  t.test('malformed', async (t) => expectProblems(t, [lan2({ port_ranges: ['80', 'a-b', '1-2-3', 8080] })], {
    errors: [
      `${AT}: lan_2.port_ranges[0]: "80" is not a port range: write "start-end", e.g. "8080-9000"`,
      `${AT}: lan_2.port_ranges[1]: "a-b" is not a port range: write "start-end", e.g. "8080-9000"`,
      `${AT}: lan_2.port_ranges[2]: "1-2-3" is not a port range: write "start-end", e.g. "8080-9000"`,
      `${AT}: lan_2.port_ranges[3]: must be a string "start-end", not number 8080`,
    ],
  }));
  t.test('out of range', async (t) => expectProblems(t, [lan1({ port_ranges: ['0-10', '1-65536'] })], {
    errors: [
      `${AT}: lan_1.port_ranges[0]: "0-10": ports must be 1–65535`,
      `${AT}: lan_1.port_ranges[1]: "1-65536": ports must be 1–65535`,
    ],
  }));
  t.test('not a list', async (t) => expectProblems(t, [lan2({ port_ranges: '1-2' })], {
    errors: [`${AT}: lan_2.port_ranges: must be a list, not the string "1-2"`],
  }));
  t.test('valid, single-port range and full range, merged with ports', async (t) => {
    const v = expectProblems(t, [lan2({ ports: [8081], port_ranges: ['8080-9000', '7-7', '1-65535'] })], {});
    t.same(v.policies?.[0].destination.ports, [{ from: 1, to: 65535 }]);
  });
});

t.test('subnets', async (t) => {
  t.test('host addresses and prefixes, v4 and v6', async (t) => {
    const v = expectProblems(t, [lan1({ subnets: ['198.18.3.7', '198.18.3.128/25', '2001:db8:3::10', '2001:db8:3::/120'] })], {});
    t.same(v.policies?.[0].origin.subnets.map((s) => s.text), ['198.18.3.7', '198.18.3.128/25', '2001:db8:3::10', '2001:db8:3::/120']);
  });
  t.test('invalid', async (t) => expectProblems(t, [lan1({ subnets: ['bogus', '198.18.3.0/33', '1.2.3', 42, '2001:db8::g'] })], {
    errors: [
      `${AT}: lan_1.subnets[0]: "bogus" is not an IPv4 or IPv6 address`,
      `${AT}: lan_1.subnets[1]: "198.18.3.0/33" is not an IPv4 or IPv6 prefix`,
      `${AT}: lan_1.subnets[2]: "1.2.3" is not a dotted-quad IPv4 address`,
      `${AT}: lan_1.subnets[3]: must be an address or prefix string, not number 42`,
      `${AT}: lan_1.subnets[4]: "2001:db8::g" is not an IPv4 or IPv6 address`,
    ],
  }));
  t.test('host bits set: warning, read as the prefix', async (t) => {
    const v = expectProblems(t, [lan1({ subnets: ['198.18.3.5/24', '2001:db8:3::1/64'] })], {
      warnings: [
        `${AT}: lan_1.subnets[0]: "198.18.3.5/24" has host bits set; it is read as 198.18.3.0/24`,
        `${AT}: lan_1.subnets[1]: "2001:db8:3::1/64" has host bits set; it is read as 2001:db8:3::/64`,
      ],
    });
    t.same(v.policies?.[0].origin.subnets.map((s) => s.text), ['198.18.3.0/24', '2001:db8:3::/64']);
  });
  t.test('outside the LAN\'s declared subnets: warning', async (t) => expectProblems(t, [lan2({ subnets: ['198.18.3.9', '198.18.4.0/23', '2001:db8:4::1'] })], {
    warnings: [
      `${AT}: lan_2.subnets[0]: 198.18.3.9 is outside the subnets of LAN "LAN 4" (198.18.4.0/24)`,
      `${AT}: lan_2.subnets[1]: 198.18.4.0/23 is outside the subnets of LAN "LAN 4" (198.18.4.0/24)`,
      `${AT}: lan_2.subnets[2]: 2001:db8:4::1 is outside the subnets of LAN "LAN 4" (198.18.4.0/24)`,
    ],
  }));
  t.test('a LAN without declared subnets accepts any subnet', async (t) => {
    expectProblems(t, [acl({ lan_2: { lan_id: 'lan-5', subnets: ['10.9.8.7', '2001:db8:99::/48'] } })], {});
  });
  t.test('listed twice: warning', async (t) => expectProblems(t, [lan1({ subnets: ['198.18.3.0/24', '198.18.3.1/24'] })], {
    warnings: [
      `${AT}: lan_1.subnets[1]: "198.18.3.1/24" has host bits set; it is read as 198.18.3.0/24`,
      `${AT}: lan_1.subnets[1]: 198.18.3.0/24 is listed twice`,
    ],
  }));
  t.test('families that can never meet: warning', async (t) => expectProblems(t, [acl({
    lan_1: { lan_id: 'lan-3', subnets: ['2001:db8:3::/64'] },
    lan_2: { lan_id: 'lan-4', subnets: ['198.18.4.0/24'] },
  })], {
    warnings: [`${AT}: lan_2.subnets: the policy can never match: lan_1 subnets are IPv6 only and lan_2 subnets IPv4 only`],
  }));
  t.test('not a list', async (t) => expectProblems(t, [lan2({ subnets: '198.18.4.0/24' })], {
    errors: [`${AT}: lan_2.subnets: must be a list, not the string "198.18.4.0/24"`],
  }));
});

t.test('LANs: known, and two different ones', async (t) => {
  t.test('unknown lan_id', async (t) => expectProblems(t, [acl({ lan_1: { lan_id: 'lan-9' } })], {
    errors: [`${AT}: lan_1.lan_id: "lan-9" is not a LAN of this site (known: lan-3 (LAN 3), lan-4 (LAN 4), lan-5 (LAN 5))`],
  }));
  t.test('lan_1 == lan_2', async (t) => expectProblems(t, [acl({ lan_2: { lan_id: 'lan-3' } })], {
    errors: [`${AT}: lan_2.lan_id: origin and destination are the same LAN ("lan-3"); a policy links two different LANs`],
  }));
  t.test('missing lan_1 / lan_2', async (t) => expectProblems(t, [{ id: ID, name: 'PIN Pad - Cash Register', forward_locally: true }], {
    errors: [`${AT}: lan_1: is required: the origin LAN`, `${AT}: lan_2: is required: the destination LAN`],
  }));
  t.test('missing lan_id', async (t) => expectProblems(t, [acl({ lan_1: { subnets: [] } })], {
    errors: [`${AT}: lan_1.lan_id: is required`],
  }));
  t.test('lan_name differing from the site config: warning', async (t) => expectProblems(t, [acl({ lan_1: { lan_id: 'lan-3', lan_name: 'Stores' } })], {
    warnings: [`${AT}: lan_1.lan_name: "Stores" differs from the site config's name "LAN 3" for this LAN`],
  }));
});

t.test('direction and protocols', async (t) => {
  t.test('unidirectional with tcp: error', async (t) => expectProblems(t, [acl({ protocols: ['tcp', 'udp'], unidirectional: true })], {
    errors: [`${AT}: unidirectional: TCP can only be bidirectional: remove "tcp" from protocols or set unidirectional to false`],
  }));
  t.test('unidirectional with all protocols ("Any"): accepted with a warning', async (t) => {
    for (const protocols of [[], undefined]) {
      const v = expectProblems(t, [acl({ protocols, unidirectional: true })], {
        warnings: [`${AT}: unidirectional: unidirectional with all protocols ("Any") will break TCP traffic: no reply can come back`],
      });
      t.same(v.policies?.[0].protocols, []);
      t.equal(v.policies?.[0].unidirectional, true);
    }
  });
  t.test('unidirectional udp and icmp: fine', async (t) => {
    expectProblems(t, [acl({ protocols: ['udp'], unidirectional: true })], {});
    expectProblems(t, [acl({ protocols: ['icmp', 'udp'], unidirectional: true })], {});
  });
  t.test('ports with icmp only: warning that they do not apply', async (t) => expectProblems(t, [acl({
    protocols: ['icmp'],
    lan_1: { lan_id: 'lan-3', ports: [1] },
    lan_2: { lan_id: 'lan-4', port_ranges: ['1-2'], ports: '5' },
  })], {
    warnings: [
      `${AT}: lan_1.ports: ports do not apply: none of the chosen protocols (icmp) has ports`,
      `${AT}: lan_2.ports: ports do not apply: none of the chosen protocols (icmp) has ports`,
      `${AT}: lan_2.port_ranges: ports do not apply: none of the chosen protocols (icmp) has ports`,
    ],
  }));
  t.test('ports with icmp and udp: no warning', async (t) => expectProblems(t, [acl({ protocols: ['icmp', 'udp'], lan_2: { lan_id: 'lan-4', ports: [53] } })], {}));
  t.test('unknown protocol, case, duplicates', async (t) => {
    expectProblems(t, [acl({ protocols: ['gre', 6] })], {
      errors: [
        `${AT}: protocols[0]: the string "gre" is not a protocol: use tcp, udp or icmp (or leave protocols empty for all)`,
        `${AT}: protocols[1]: number 6 is not a protocol: use tcp, udp or icmp (or leave protocols empty for all)`,
      ],
    });
    const v = expectProblems(t, [acl({ protocols: ['ICMP', 'Tcp', 'tcp'] })], {
      warnings: [`${AT}: protocols[2]: "tcp" is listed twice`],
    });
    t.same(v.policies?.[0].protocols, ['tcp', 'icmp'], 'lower-cased, canonical order');
  });
  t.test('defaults: bidirectional, via Cloudflare', async (t) => {
    const v = expectProblems(t, [{ id: ID, name: 'x', lan_1: { lan_id: 'lan-3' }, lan_2: { lan_id: 'lan-4' } }], {});
    t.equal(v.policies?.[0].unidirectional, false);
    t.equal(v.policies?.[0].forwardLocally, false);
  });
  t.test('via Cloudflare without a tunnel in the site config: error', async (t) => {
    const { tunnel: _omit, ...noTunnel } = SITE;
    expectProblems(t, [acl({ forward_locally: false })], {
      errors: [`${AT}: forward_locally: traffic is forwarded via Cloudflare (forward_locally is false), but the site config has no tunnel`],
    }, noTunnel);
    expectProblems(t, [acl({ forward_locally: true })], {}, noTunnel);
  });
});

t.test('ids', async (t) => {
  t.test('duplicate ids: error on the second', async (t) => expectProblems(t, [acl(), acl({ name: 'Other' })], {
    errors: [`acls.json: policy "Other" (${ID}): id: duplicate id: also used by policy "PIN Pad - Cash Register" in acls.json`],
  }));
  t.test('duplicate ids across files name the first file', async (t) => {
    const v = validate(SITE, 'site.yaml', [{ file: 'a.yaml', content: [acl()] }, { file: 'b.json', content: [acl({ name: 'Other' })] }]);
    t.same(v.problems.map(formatProblem), [`b.json: policy "Other" (${ID}): id: duplicate id: also used by policy "PIN Pad - Cash Register" in a.yaml`]);
  });
  t.test('an ACL without id gets a stable id derived from its content', async (t) => {
    const { id: _id, ...noId } = acl();
    const a = run([noId]);
    const b = run([{ ...noId }]);
    const reordered = run([Object.fromEntries(Object.entries(noId).reverse())]);
    t.ok(a.ok);
    t.match(a.policies?.[0].id, /^[0-9a-f]{32}$/);
    t.equal(a.policies?.[0].id, b.policies?.[0].id, 'same content, same id');
    t.equal(a.policies?.[0].id, reordered.policies?.[0].id, 'key order does not matter');
    t.equal(a.policies?.[0].id, derivedId(noId));
    const changed = run([{ ...noId, lan_2: { lan_id: 'lan-4', ports: [443] } }]);
    t.not(changed.policies?.[0].id, a.policies?.[0].id, 'different content, different id');
  });
  t.test('two identical ACLs without id: one duplicate error that says why', async (t) => {
    const { id: _id, ...noId } = acl();
    const id = derivedId(noId);
    expectProblems(t, [noId, noId], {
      errors: [`acls.json: policy "PIN Pad - Cash Register" (${id}): duplicate: the same content as policy "PIN Pad - Cash Register" in acls.json (an ACL without id gets an id derived from its content)`],
    });
  });
  t.test('ids must be usable in nft names', async (t) => expectProblems(t, [acl({ id: 'has space' })], {
    errors: [`acls.json: policy "PIN Pad - Cash Register" (has space): id: "has space" is not a valid id (letters, digits, _ and -, up to 64 characters)`],
  }));
  t.test('a policy without a name is shown by position', async (t) => expectProblems(t, [acl({ name: undefined, protocols: 'tcp' })], {
    errors: [`acls.json: policy "#1" (${ID}): protocols: must be a list, not the string "tcp"`],
  }));
});

t.test('unknown fields: warnings', async (t) => expectProblems(t, [acl({ colour: 'red', lan_1: { lan_id: 'lan-3', vlan: 3 } })], {
  warnings: [`${AT}: colour: unknown field, ignored`, `${AT}: lan_1.vlan: unknown field, ignored`],
}));

t.test('wrong types: errors', async (t) => {
  expectProblems(t, [acl({ description: [], unidirectional: 'yes', forward_locally: 1, lan_1: 'lan-3', lan_2: { lan_id: 7 } })], {
    errors: [
      `${AT}: description: must be a string, not a list`,
      `${AT}: unidirectional: must be true or false, not the string "yes"`,
      `${AT}: forward_locally: must be true or false, not number 1`,
      `${AT}: lan_1: must be a mapping with lan_id, not the string "lan-3"`,
      `${AT}: lan_2.lan_id: must be a string, not number 7`,
    ],
  });
  expectProblems(t, [acl({ name: 5 })], {
    errors: [`acls.json: policy "#1" (${ID}): name: must be a string, not number 5`],
  });
  expectProblems(t, [5, 'x'], {
    errors: ['acls.json: [0]: an ACL must be a mapping, not number 5', 'acls.json: [1]: an ACL must be a mapping, not the string "x"'],
  });
});

t.test('documents: lists, API envelopes, empty', async (t) => {
  t.test('an empty list is valid (everything LAN-to-LAN is dropped)', async (t) => {
    const v = expectProblems(t, [], {});
    t.same(v.policies, []);
  });
  t.test('an empty file is an empty list', async (t) => {
    const v = expectProblems(t, null, {});
    t.same(v.policies, []);
  });
  t.test('a saved API response (`curl …/acls > acls.json`)', async (t) => {
    const v = expectProblems(t, { errors: [], messages: [], result: [acl(), acl({ id: 'b1', name: 'B' })], success: true, result_info: { count: 2 } }, {});
    t.same(v.policies?.map((p) => p.id), [ID, 'b1']);
  });
  t.test('a single-object API response (create/get)', async (t) => {
    const v = expectProblems(t, { errors: [], messages: [], result: acl(), success: true }, {});
    t.same(v.policies?.map((p) => p.id), [ID]);
  });
  t.test('a single ACL object', async (t) => {
    const v = expectProblems(t, acl(), {});
    t.same(v.policies?.map((p) => p.id), [ID]);
  });
  t.test('"success": false is an error that quotes the API errors', async (t) => expectProblems(t, {
    errors: [{ code: 1000, message: 'Authentication error' }], messages: [], result: null, success: false,
  }, {
    errors: ['acls.json: saved API response has "success": false (Authentication error)'],
  }));
  t.test('result of the wrong type', async (t) => expectProblems(t, { result: 'x', success: true }, {
    errors: ['acls.json: result: must be a list of ACL objects, not the string "x"'],
  }));
  t.test('neither a list nor an envelope', async (t) => expectProblems(t, { foo: 1 }, {
    errors: ['acls.json: expected a list of ACL objects or an API response with "result", not a mapping'],
  }));
});

t.test('all problems are collected, not just the first', async (t) => {
  const v = run([lan2({ ports: [0], port_ranges: ['9-1'] }), acl({ id: 'b2', name: 'B', lan_1: { lan_id: 'nope' } })]);
  t.equal(v.problems.length, 3);
  t.equal(v.ok, false);
  t.equal(v.policies, undefined, 'nothing to apply when there are errors');
});
