// The host agent: a small Node program run inside each host namespace
// (`ip netns exec NS node -e HOST_AGENT_SOURCE`). It answers JSON-lines requests on stdin:
// it runs TCP echo servers and UDP echo listeners that record which probe tokens arrived,
// and it acts as a TCP/UDP client. One long-lived process per namespace keeps probes fast
// (no process start per probe) and lets many probes run at once.
//
// The source is plain CommonJS JavaScript in a string so it runs the same whether the harness
// itself was loaded from dist/ (tsc) or from the .ts sources (tap's TypeScript loader).
//
// Requests:  {"id":1,"op":"listen","proto":"tcp"|"udp","port":8080}
//            {"id":2,"op":"tcp","host":"198.18.2.10","port":443,"srcPort":40001,"timeoutMs":1000,"token":"t1"}
//            {"id":3,"op":"udp","host":"…","port":161,"srcPort":40002,"timeoutMs":1000,"token":"t2"}
//            {"id":4,"op":"seen","token":"t2"}
//            {"id":5,"op":"open", …same as tcp} → {"handle":1,…}; "send" {handle,token,timeoutMs}; "close" {handle}
//            "tcp"/"open"/"udp" also take "localAddress" (bind the client to one of the host's addresses)
// Exchanges (agent/harness/exchange.ts): "tlisten"/"tunlisten" {port} (a TCP echo server that
//            can be closed again, with its connections), "ubind" {address,port} (a UDP echo socket
//            bound to one address, also used to send from it), "usend" {address,port,host,dstPort,
//            token,timeoutMs} → {replied}, "uunbind" {address,port}
// Continuous flows (agent/harness/flows.ts): "stream" (TCP lines with sequence numbers, echoed),
//            "train" (UDP datagrams with sequence numbers), "knock" (repeated TCP connection
//            attempts), each → {handle}; "flowStop" {handle,token,drainMs} stops sending and waits
//            for the echoes; "flowClose" {handle}; "seqSeen" {token} (what a receiver got, in order?)
// Replies:   {"id":1,"ok":true,"result":{…}} or {"id":1,"ok":false,"error":"…"}
// Every datagram and TCP line a listener receives is echoed back as "echo <line>" unless it
// contains "noreply"; tokens are "cacl:<token>".

export const HOST_AGENT_SOURCE = String.raw`
'use strict';
const net = require('node:net');
const dgram = require('node:dgram');
const readline = require('node:readline');

const tcpListeners = new Map();
const udpListeners = new Map();
const seen = new Map();
const sessions = new Map();
let nextHandle = 1;

const TOKEN = /cacl:([A-Za-z0-9_.-]+)/g;
const tokensIn = (text) => [...text.matchAll(TOKEN)].map((m) => m[1]);
const plain = (a) => (typeof a === 'string' && a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a);
const familyOf = (host) => (host.includes(':') ? 6 : 4);

function record(token, fact) {
  let list = seen.get(token);
  if (!list) seen.set(token, (list = []));
  if (list.length < 100) list.push(fact);
}

// One accepted TCP connection of an echo server: records tokens (and sequence numbers of
// streams) and echoes every line unless it says "noreply".
function serveTcp(sock, port) {
  sock.on('error', () => {});
  let buf = '';
  sock.on('data', (d) => {
    buf += d.toString('utf8');
    if (buf.length > 1048576) buf = buf.slice(-65536);
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!seqLine(line)) for (const t of tokensIn(line)) record(t, { proto: 'tcp', from: plain(sock.remoteAddress), fromPort: sock.remotePort, port });
      if (!line.includes('noreply')) sock.write('echo ' + line + '\n');
    }
  });
}

function listenTcp(port) {
  if (!tcpListeners.has(port)) {
    tcpListeners.set(port, new Promise((resolve, reject) => {
      const server = net.createServer((sock) => serveTcp(sock, port));
      server.on('error', (e) => { tcpListeners.delete(port); reject(e); });
      server.listen({ port, host: '::', ipv6Only: false, backlog: 511 }, () => resolve({ port }));
    }));
  }
  return tcpListeners.get(port);
}

// A datagram that reached a listening socket: record it, echo it unless it says "noreply".
// Datagrams that are themselves echoes ("echo …") are never echoed again.
function onDatagram(sock, msg, rinfo, port) {
  const text = msg.toString('utf8');
  if (text.startsWith('echo ')) return false;
  if (!seqLine(text)) for (const t of tokensIn(text)) record(t, { proto: 'udp', from: plain(rinfo.address), fromPort: rinfo.port, port });
  if (!text.includes('noreply')) sock.send('echo ' + text, rinfo.port, rinfo.address, () => {});
  return true;
}

function listenUdp(port) {
  if (!udpListeners.has(port)) {
    udpListeners.set(port, new Promise((resolve, reject) => {
      const sock = dgram.createSocket({ type: 'udp6', ipv6Only: false });
      sock.on('error', (e) => { udpListeners.delete(port); reject(e); });
      sock.on('message', (msg, rinfo) => onDatagram(sock, msg, rinfo, port));
      sock.bind(port, '::', () => resolve({ port }));
    }));
  }
  return udpListeners.get(port);
}

// Sequence numbers of streams and trains: "cacl:<token> seq=<n>". For each token the receiver
// keeps how many arrived, whether they arrived as 0, 1, 2, … and what came out of order.
const seqs = new Map();
const SEQ = /cacl:([A-Za-z0-9_.\/-]+) seq=(\d+)/;
function seqRecord(token, n) {
  let s = seqs.get(token);
  if (!s) seqs.set(token, (s = { count: 0, next: 0, inOrder: true, firstBad: null, max: -1, lastAt: 0, maxGapMs: 0 }));
  const now = Date.now();
  if (s.count > 0) s.maxGapMs = Math.max(s.maxGapMs, now - s.lastAt);
  s.lastAt = now;
  s.count++;
  if (n === s.next) s.next++;
  else {
    if (s.inOrder) s.firstBad = { expected: s.next, got: n };
    s.inOrder = false;
    if (n > s.next) s.next = n + 1;
  }
  if (n > s.max) s.max = n;
}
function seqLine(text, suffix) {
  const m = SEQ.exec(text);
  if (!m) return false;
  seqRecord(m[1] + (suffix || ''), Number(m[2]));
  return true;
}
const seqOf = (token) => {
  const s = seqs.get(token);
  return s ? { count: s.count, inOrder: s.inOrder, firstBad: s.firstBad, max: s.max, maxGapMs: s.maxGapMs } : { count: 0, inOrder: true, firstBad: null, max: -1, maxGapMs: 0 };
};

// ---------------------------------------------------------------------------------------------
// Exchanges: listeners that come and go, UDP sockets bound to one address.

const tempTcp = new Map();
function tlisten(req) {
  const port = req.port;
  let e = tempTcp.get(port);
  if (e) {
    e.refs++;
    return e.ready;
  }
  if (tcpListeners.has(port)) {
    e = { shared: true, refs: 1, ready: tcpListeners.get(port) };
    tempTcp.set(port, e);
    return e.ready;
  }
  const sockets = new Set();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    serveTcp(sock, port);
  });
  e = { shared: false, refs: 1, server, sockets };
  e.ready = new Promise((resolve, reject) => {
    server.on('error', (err) => { if (tempTcp.get(port) === e) tempTcp.delete(port); reject(err); });
    server.listen({ port, host: '::', ipv6Only: false, backlog: 511 }, () => resolve({ port }));
  });
  tempTcp.set(port, e);
  return e.ready;
}

function tunlisten(req) {
  const e = tempTcp.get(req.port);
  if (!e) return Promise.resolve({ open: false });
  if (--e.refs > 0) return Promise.resolve({ open: true });
  tempTcp.delete(req.port);
  if (e.shared) return Promise.resolve({ open: true });
  for (const s of e.sockets) closeSocket(s, true);
  return new Promise((resolve) => e.server.close(() => resolve({ open: false })));
}

const pool = new Map();
function ubind(req) {
  const key = req.address + '|' + req.port;
  let e = pool.get(key);
  if (e) return e.ready;
  const sock = dgram.createSocket(familyOf(req.address) === 6 ? { type: 'udp6', ipv6Only: true } : { type: 'udp4' });
  e = { sock, waiters: new Map() };
  e.ready = new Promise((resolve, reject) => {
    sock.once('error', (err) => { pool.delete(key); reject(err); });
    sock.bind(req.port, req.address, () => {
      sock.on('error', () => {});
      resolve({ port: sock.address().port });
    });
  });
  sock.on('message', (msg, rinfo) => {
    if (onDatagram(sock, msg, rinfo, req.port)) return;
    for (const t of tokensIn(msg.toString('utf8'))) {
      const w = e.waiters.get(t);
      if (w) w();
    }
  });
  pool.set(key, e);
  return e.ready;
}

function uunbind(req) {
  const key = req.address + '|' + req.port;
  const e = pool.get(key);
  if (e) {
    pool.delete(key);
    try { e.sock.close(); } catch (err) {}
  }
  return Promise.resolve({});
}

function usend(req) {
  const e = pool.get(req.address + '|' + req.port);
  if (!e) return Promise.reject(new Error('no socket bound to ' + req.address + ' port ' + req.port));
  return e.ready.then(() => new Promise((resolve) => {
    const started = Date.now();
    let done = false;
    let timer;
    const finish = (replied, error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      e.waiters.delete(req.token);
      resolve({ replied, ms: Date.now() - started, error });
    };
    timer = setTimeout(() => finish(false), req.timeoutMs);
    e.waiters.set(req.token, () => finish(true));
    e.sock.send('cacl:' + req.token + '\n', req.dstPort, req.host, (err) => { if (err) finish(false, err.code || err.message); });
  }));
}

// ---------------------------------------------------------------------------------------------
// Continuous flows: a TCP stream and a UDP train with sequence numbers, repeated TCP attempts.

const flows = new Map();
const pad = (n) => (n > 0 ? ' ' + 'x'.repeat(n) : '');

function stream(req) {
  return new Promise((resolve) => {
    const options = { host: req.host, port: req.port, family: familyOf(req.host) };
    if (req.srcPort) options.localPort = req.srcPort;
    if (req.localAddress) options.localAddress = req.localAddress;
    const sock = net.connect(options);
    const handle = nextHandle++;
    const f = { kind: 'stream', sock, sent: 0, timer: null, error: null, closed: false, connected: false };
    let buf = '';
    let settled = false;
    const timer = setTimeout(() => { if (!settled) { settled = true; closeSocket(sock, false); resolve({ connected: false, error: 'connect timeout' }); } }, req.timeoutMs || 2000);
    sock.on('error', (e) => {
      f.error = e.code || e.message;
      if (!settled) { settled = true; clearTimeout(timer); resolve({ connected: false, error: f.error }); }
    });
    sock.on('close', () => { f.closed = true; });
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        seqLine(buf.slice(0, i), '/echo');
        buf = buf.slice(i + 1);
      }
    });
    sock.on('connect', () => {
      settled = true;
      clearTimeout(timer);
      f.connected = true;
      flows.set(handle, f);
      const extra = pad(req.payloadBytes || 0);
      f.timer = setInterval(() => {
        if (sock.destroyed) return;
        for (let k = 0; k < (req.burst || 1); k++) sock.write('cacl:' + req.token + ' seq=' + f.sent++ + extra + '\n');
      }, req.intervalMs || 2);
      resolve({ connected: true, handle, localPort: sock.localPort });
    });
  });
}

function train(req) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket(familyOf(req.host) === 6 ? { type: 'udp6', ipv6Only: true } : 'udp4');
    const handle = nextHandle++;
    const f = { kind: 'train', sock, sent: 0, timer: null, error: null };
    sock.on('error', (e) => { f.error = e.code || e.message; });
    sock.on('message', (msg) => seqLine(msg.toString('utf8'), '/echo'));
    sock.bind(req.srcPort || 0, req.localAddress || undefined, () => {
      flows.set(handle, f);
      const extra = (req.noreply ? ' noreply' : '') + pad(req.payloadBytes || 0);
      f.timer = setInterval(() => {
        for (let k = 0; k < (req.burst || 1); k++) sock.send('cacl:' + req.token + ' seq=' + f.sent++ + extra + '\n', req.port, req.host, () => {});
      }, req.intervalMs || 5);
      resolve({ handle, localPort: sock.address().port });
    });
  });
}

function knock(req) {
  const handle = nextHandle++;
  const f = { kind: 'knock', attempts: 0, connected: 0, timer: null, open: new Set() };
  const once = () => {
    const options = { host: req.host, port: req.port, family: familyOf(req.host) };
    if (req.localAddress) options.localAddress = req.localAddress;
    const sock = net.connect(options);
    f.attempts++;
    f.open.add(sock);
    const done = () => { f.open.delete(sock); closeSocket(sock, false); };
    const t = setTimeout(done, req.attemptMs || 300);
    sock.on('error', () => { clearTimeout(t); done(); });
    sock.on('connect', () => { f.connected++; clearTimeout(t); done(); });
  };
  flows.set(handle, f);
  once();
  f.timer = setInterval(once, req.intervalMs || 20);
  return Promise.resolve({ handle });
}

// Stops sending; waits up to drainMs for the echoes of everything sent; the stream's connection
// stays open until "flowClose" (so counters can be read before the closing packets).
function flowStop(req) {
  const f = flows.get(req.handle);
  if (!f) return Promise.reject(new Error('no flow ' + req.handle));
  clearInterval(f.timer);
  if (f.kind === 'knock') {
    for (const s of f.open) closeSocket(s, false);
    flows.delete(req.handle);
    return Promise.resolve({ attempts: f.attempts, connected: f.connected });
  }
  const echoKey = req.token + '/echo';
  const started = Date.now();
  return new Promise((resolve) => {
    const check = () => {
      const e = seqOf(echoKey);
      if (req.noEcho || e.count >= f.sent || Date.now() - started >= (req.drainMs || 1000)) {
        if (f.kind === 'train') {
          try { f.sock.close(); } catch (err) {}
          flows.delete(req.handle);
        }
        resolve({ sent: f.sent, echoes: e, error: f.error, closed: !!f.closed });
      } else setTimeout(check, 10);
    };
    check();
  });
}

function flowClose(req) {
  const f = flows.get(req.handle);
  if (f) {
    flows.delete(req.handle);
    clearInterval(f.timer);
    if (f.kind === 'stream') closeSocket(f.sock, !f.closed);
  }
  return Promise.resolve({});
}

function closeSocket(sock, connected) {
  try {
    if (connected && typeof sock.resetAndDestroy === 'function') sock.resetAndDestroy();
    else sock.destroy();
  } catch (e) {
    sock.destroy();
  }
}

// Connects, sends one token line, waits for its echo. keep=true leaves the connection open.
function tcpClient(req, keep) {
  return new Promise((resolve) => {
    const started = Date.now();
    const options = { host: req.host, port: req.port, family: familyOf(req.host) };
    if (req.srcPort) options.localPort = req.srcPort;
    if (req.localAddress) options.localAddress = req.localAddress;
    const sock = net.connect(options);
    const want = 'cacl:' + req.token;
    let connected = false;
    let done = false;
    let buf = '';
    let timer;
    const finish = (fields) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const result = Object.assign({ connected, roundTrip: false, localPort: sock.localPort || req.srcPort || null, ms: Date.now() - started }, fields);
      if (keep && connected) {
        const handle = nextHandle++;
        sessions.set(handle, { sock, buf: '', waiters: [] });
        sock.removeAllListeners('data');
        sock.on('data', (d) => onSessionData(handle, d));
        result.handle = handle;
      } else {
        closeSocket(sock, connected);
      }
      resolve(result);
    };
    timer = setTimeout(() => finish({ error: 'connect timeout' }), req.timeoutMs);
    sock.on('connect', () => {
      connected = true;
      clearTimeout(timer);
      timer = setTimeout(() => finish({ error: 'no echo' }), req.timeoutMs);
      sock.write(want + '\n');
    });
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.includes(want + '\n')) finish({ roundTrip: true });
    });
    sock.on('error', (e) => finish({ error: e.code || e.message }));
    sock.on('close', () => {
      const s = [...sessions.entries()].find(([, v]) => v.sock === sock);
      if (s) s[1].closed = true;
    });
  });
}

function onSessionData(handle, d) {
  const s = sessions.get(handle);
  if (!s) return;
  s.buf += d.toString('utf8');
  if (s.buf.length > 65536) s.buf = s.buf.slice(-65536);
  for (const w of [...s.waiters]) if (s.buf.includes(w.want + '\n')) w.resolve(true);
}

function sessionSend(req) {
  const s = sessions.get(req.handle);
  if (!s) return Promise.reject(new Error('no session ' + req.handle));
  const want = 'cacl:' + req.token;
  return new Promise((resolve) => {
    const started = Date.now();
    const waiter = { want, resolve: null };
    const timer = setTimeout(() => waiter.resolve(false), req.timeoutMs);
    waiter.resolve = (ok) => {
      clearTimeout(timer);
      s.waiters = s.waiters.filter((w) => w !== waiter);
      resolve({ roundTrip: ok, closed: !!s.closed, ms: Date.now() - started });
    };
    s.waiters.push(waiter);
    if (s.closed || s.sock.destroyed) return waiter.resolve(false);
    s.sock.write(want + '\n', () => {});
  });
}

function sessionClose(req) {
  const s = sessions.get(req.handle);
  if (s) {
    sessions.delete(req.handle);
    closeSocket(s.sock, !s.closed);
  }
  return Promise.resolve({});
}

function udpClient(req) {
  return new Promise((resolve) => {
    const started = Date.now();
    const sock = dgram.createSocket(familyOf(req.host) === 6 ? { type: 'udp6', ipv6Only: true } : 'udp4');
    const want = 'cacl:' + req.token;
    let done = false;
    let timer;
    let localPort = req.srcPort || null;
    const finish = (fields) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      try { sock.close(); } catch (e) {}
      resolve(Object.assign({ replied: false, localPort, ms: Date.now() - started }, fields));
    };
    sock.on('error', (e) => finish({ error: e.code || e.message }));
    sock.on('message', (msg) => {
      if (msg.toString('utf8').includes(want)) finish({ replied: true });
    });
    sock.bind(req.srcPort || 0, req.localAddress || undefined, () => {
      localPort = sock.address().port;
      timer = setTimeout(() => finish({}), req.timeoutMs);
      sock.send(want + (req.noreply ? ' noreply' : '') + '\n', req.port, req.host, (e) => { if (e) finish({ error: e.code || e.message }); });
    });
  });
}

const ops = {
  listen: (req) => (req.proto === 'udp' ? listenUdp(req.port) : listenTcp(req.port)),
  tcp: (req) => tcpClient(req, false),
  open: (req) => tcpClient(req, true),
  send: sessionSend,
  close: sessionClose,
  udp: udpClient,
  seen: (req) => Promise.resolve({ facts: seen.get(req.token) || [] }),
  tlisten,
  tunlisten,
  ubind,
  uunbind,
  usend,
  stream,
  train,
  knock,
  flowStop,
  flowClose,
  seqSeen: (req) => Promise.resolve(seqOf(req.token)),
  ping: () => Promise.resolve({ pid: process.pid }),
};

function reply(msg) {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return reply({ id: null, ok: false, error: 'bad request' });
  }
  const op = ops[req.op];
  if (!op) return reply({ id: req.id, ok: false, error: 'unknown op ' + req.op });
  Promise.resolve()
    .then(() => op(req))
    .then((result) => reply({ id: req.id, ok: true, result }), (e) => reply({ id: req.id, ok: false, error: (e && (e.code || e.message)) || String(e) }));
});
// The harness going away (even killed) closes stdin: never outlive it.
rl.on('close', () => process.exit(0));
process.on('uncaughtException', (e) => {
  reply({ id: null, ok: false, error: 'uncaught: ' + (e && e.stack) });
});
reply({ id: 0, ok: true, result: { ready: true, pid: process.pid } });
`;
