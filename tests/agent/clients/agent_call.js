// A raftsso agent client in plain Node.js: http.request with socketPath, no library,
// no raftsso code.
//
//   node agent_call.js /run/raftsso/agent.sock payroll alice
//
// Prints one line per check ("ok ...") and the ciphertext it made; exits 1 on failure.
'use strict';
const http = require('http');

const [socketPath, app, user] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {};
    const req = http.request({ socketPath, path, method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks)) }));
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s) => Buffer.from(s, 'base64').toString('utf8');

function check(ok, what) {
  if (!ok) { console.log('FAILED ' + what); process.exit(1); }
  console.log('ok ' + what);
}

(async () => {
  const health = await call('GET', '/v1/health');
  check(health.status === 200 && health.body.status === 'ok', 'health');

  const plain = 'hello from Node \u00e9';
  const enc = await call('POST', '/v1/encrypt', { app, plaintext: b64(plain), associated_data: b64('order-42') });
  check(enc.status === 200 && Number.isInteger(enc.body.key_version), 'encrypt');
  console.log('ciphertext ' + enc.body.ciphertext);

  // Keep-alive: several requests on one connection.
  for (let i = 0; i < 20; i++) {
    const dec = await call('POST', '/v1/decrypt', { app, ciphertext: enc.body.ciphertext, associated_data: b64('order-42') });
    check(dec.status === 200 && unb64(dec.body.plaintext) === plain, 'decrypt ' + i);
  }
  const other = await call('POST', '/v1/decrypt', { app, ciphertext: enc.body.ciphertext, associated_data: b64('order-43') });
  check(other.status === 400 && other.body.error === 'INVALID_TOKEN', 'other associated data is refused');

  const cred = await call('GET', `/v1/apps/${encodeURIComponent(app)}/credentials/${encodeURIComponent(user)}`);
  check(cred.status === 200, 'credential get');
  console.log('credential ' + unb64(cred.body.credential));

  const bad = await call('POST', '/v1/encrypt', { app, plaintext: 42 });
  check(bad.status === 400 && bad.body.error === 'BAD_REQUEST', 'a wrong type is 400');
  agent.destroy();
})().catch((e) => { console.log('FAILED ' + e); process.exit(1); });
