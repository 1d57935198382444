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

function listenTcp(port) {
  if (!tcpListeners.has(port)) {
    tcpListeners.set(port, new Promise((resolve, reject) => {
      const server = net.createServer((sock) => {
        sock.on('error', () => {});
        let buf = '';
        sock.on('data', (d) => {
          buf += d.toString('utf8');
          if (buf.length > 65536) buf = buf.slice(-65536);
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            for (const t of tokensIn(line)) record(t, { proto: 'tcp', from: plain(sock.remoteAddress), fromPort: sock.remotePort, port });
            if (!line.includes('noreply')) sock.write('echo ' + line + '\n');
          }
        });
      });
      server.on('error', (e) => { tcpListeners.delete(port); reject(e); });
      server.listen({ port, host: '::', ipv6Only: false, backlog: 511 }, () => resolve({ port }));
    }));
  }
  return tcpListeners.get(port);
}

function listenUdp(port) {
  if (!udpListeners.has(port)) {
    udpListeners.set(port, new Promise((resolve, reject) => {
      const sock = dgram.createSocket({ type: 'udp6', ipv6Only: false });
      sock.on('error', (e) => { udpListeners.delete(port); reject(e); });
      sock.on('message', (msg, rinfo) => {
        const text = msg.toString('utf8');
        for (const t of tokensIn(text)) record(t, { proto: 'udp', from: plain(rinfo.address), fromPort: rinfo.port, port });
        if (!text.includes('noreply')) sock.send('echo ' + text, rinfo.port, rinfo.address, () => {});
      });
      sock.bind(port, '::', () => resolve({ port }));
    }));
  }
  return udpListeners.get(port);
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
    sock.bind(req.srcPort || 0, () => {
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
