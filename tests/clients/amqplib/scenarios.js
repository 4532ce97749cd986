'use strict';
// Node's amqplib (promise API), unchanged, against an AMQP 0-9-1 broker.
//
//   node scenarios.js <amqp-url> <scenario>
//
// Runs one scenario, prints its outcome as one JSON document on stdout and exits 0; on failure
// prints the error on stderr and exits 1. tests/clients/test_amqplib.py asserts on the JSON.
// Every queue and exchange name carries a random suffix, and what a scenario declares it deletes.

const crypto = require('crypto');
const amqp = require('amqplib');

const TIMEOUT_MS = 10000;
const SUFFIX = crypto.randomBytes(6).toString('hex');

const uniq = (prefix) => `amqplib-${prefix}-${SUFFIX}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A promise with its resolve/reject outside, rejected after `ms` unless settled before.
function deferred(what, ms = TIMEOUT_MS) {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  promise.finally(() => clearTimeout(timer)).catch(() => {});
  return { promise, resolve, reject };
}

async function waitUntil(what, cond, ms = TIMEOUT_MS) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// Channels whose unhandled 'error' event would otherwise crash the process record it instead.
function watch(ch, errors = []) {
  ch.on('error', (err) => errors.push({ code: err.code, message: err.message }));
  return errors;
}

// The properties a message arrived with, without the ones that are unset.
function setProps(props) {
  const out = {};
  for (const [k, v] of Object.entries(props)) if (v !== undefined) out[k] = v;
  return out;
}

// Drain a queue with basic.get (auto-ack): the bodies as strings.
async function drain(ch, queue) {
  const out = [];
  for (;;) {
    const msg = await ch.get(queue, { noAck: true });
    if (msg === false) return out;
    out.push(msg.content.toString());
  }
}

// Deletes what a scenario declared, on a fresh channel of the scenario's connection.
async function cleanup(conn, { queues = [], exchanges = [] }) {
  const ch = await conn.createChannel();
  watch(ch);
  for (const q of queues) await ch.deleteQueue(q);
  for (const x of exchanges) await ch.deleteExchange(x);
  await ch.close();
}

// -- the scenarios ------------------------------------------------------------------------------

// Tutorial one: assertQueue, sendToQueue, consume with noAck.
async function hello(conn) {
  const q = uniq('hello');
  const ch = await conn.createChannel();
  watch(ch);
  const declared = await ch.assertQueue(q, { durable: false });
  const sent = ch.sendToQueue(q, Buffer.from('Hello World!'));
  const got = deferred('the hello message');
  const { consumerTag } = await ch.consume(q, (msg) => got.resolve(msg), { noAck: true });
  const msg = await got.promise;
  await ch.cancel(consumerTag);
  const deleted = await ch.deleteQueue(q);
  await ch.close();
  return {
    declared: { queue: declared.queue === q, messageCount: declared.messageCount,
                consumerCount: declared.consumerCount },
    sent,
    body: msg.content.toString(),
    fields: { exchange: msg.fields.exchange, routingKey: msg.fields.routingKey === q,
              redelivered: msg.fields.redelivered, deliveryTag: msg.fields.deliveryTag,
              consumerTag: msg.fields.consumerTag === consumerTag },
    consumerTagIsString: typeof consumerTag === 'string' && consumerTag.length > 0,
    deletedMessageCount: deleted.messageCount,
  };
}

// Tutorial two: a durable work queue, persistent messages, two workers with prefetch(1) and manual
// ack; each worker takes its time, so the broker must wait for the ack before the next delivery.
async function workQueue(conn) {
  const q = uniq('tasks');
  const n = 20;
  const setup = await conn.createConfirmChannel();
  watch(setup);
  await setup.assertQueue(q, { durable: true });
  const workers = [];
  for (const delay of [4, 9]) {
    const wconn = await amqp.connect(process.argv[2]);
    const ch = await wconn.createChannel();
    watch(ch);
    await ch.prefetch(1);
    const w = { conn: wconn, ch, got: [], inFlight: 0, maxInFlight: 0, redelivered: 0 };
    await ch.consume(q, async (msg) => {
      w.inFlight += 1;
      w.maxInFlight = Math.max(w.maxInFlight, w.inFlight);
      if (msg.fields.redelivered) w.redelivered += 1;
      w.got.push(msg.content.toString());
      await sleep(delay);
      w.inFlight -= 1;
      ch.ack(msg);
    }, { noAck: false });
    workers.push(w);
  }
  const tasks = [];
  for (let k = 0; k < n; k++) {
    tasks.push(`task-${String(k).padStart(2, '0')}`);
    setup.sendToQueue(q, Buffer.from(tasks[k]), { persistent: true });
  }
  await setup.waitForConfirms();
  await waitUntil('all tasks', () => workers.reduce((s, w) => s + w.got.length, 0) >= n);
  await sleep(300); // anything delivered twice would show up by now
  const all = workers.flatMap((w) => w.got);
  const left = await setup.checkQueue(q);
  for (const w of workers) await w.conn.close();
  await sleep(50);
  const after = await setup.checkQueue(q);
  await setup.deleteQueue(q);
  await setup.close();
  return {
    counts: workers.map((w) => w.got.length),
    total: all.length,
    distinct: new Set(all).size,
    everyTaskOnce: JSON.stringify([...all].sort()) === JSON.stringify(tasks),
    inOrderPerWorker: workers.map((w) => JSON.stringify(w.got) === JSON.stringify([...w.got].sort())),
    maxInFlight: workers.map((w) => w.maxInFlight),
    redelivered: workers.map((w) => w.redelivered),
    queueWhileConsuming: { messageCount: left.messageCount, consumerCount: left.consumerCount },
    queueAfter: { messageCount: after.messageCount, consumerCount: after.consumerCount },
  };
}

// Tutorial three: a fanout exchange and two exclusive server-named queues.
async function pubsub(conn) {
  const ex = uniq('logs');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  const declared = await ch.assertExchange(ex, 'fanout', { durable: false });
  const q1 = (await ch.assertQueue('', { exclusive: true })).queue;
  const q2 = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(q1, ex, '');
  await ch.bindQueue(q2, ex, 'ignored-by-fanout');
  const got = { [q1]: [], [q2]: [] };
  const seen = [];
  for (const q of [q1, q2]) {
    await ch.consume(q, (msg) => {
      got[q].push(msg.content.toString());
      seen.push({ exchange: msg.fields.exchange === ex, routingKey: msg.fields.routingKey });
    }, { noAck: true });
  }
  for (const [i, rk] of ['info', 'warning', ''].entries()) ch.publish(ex, rk, Buffer.from(`log-${i}`));
  await ch.waitForConfirms();
  await waitUntil('both queues', () => got[q1].length >= 3 && got[q2].length >= 3);
  await sleep(100);
  const result = {
    exchange: declared.exchange === ex,
    serverNamed: [q1, q2].map((q) => q.startsWith('amq.gen-')),
    distinctNames: q1 !== q2,
    got: [got[q1], got[q2]],
    fields: seen,
  };
  await ch.close();
  await cleanup(conn, { queues: [q1, q2], exchanges: [ex] });
  return result;
}

// Tutorial five: a topic exchange, with '*' (one word) and '#' (zero or more words).
async function topic(conn) {
  const ex = uniq('topic');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertExchange(ex, 'topic', { durable: false });
  const bindings = {
    orange: ['*.orange.*'],
    rabbitOrLazy: ['*.*.rabbit', 'lazy.#'],
    everything: ['#'],
    kernel: ['kern.*', '*.critical'],
  };
  const queues = {};
  for (const [name, patterns] of Object.entries(bindings)) {
    queues[name] = (await ch.assertQueue(uniq(`topic-${name}`), { exclusive: true })).queue;
    for (const p of patterns) await ch.bindQueue(queues[name], ex, p);
  }
  const keys = ['quick.orange.rabbit', 'lazy.orange.elephant', 'quick.orange.fox', 'lazy.brown.fox',
    'lazy.pink.rabbit', 'quick.brown.fox', 'orange', 'quick.orange.male.rabbit',
    'lazy.orange.male.rabbit', 'lazy', 'kern.critical', 'kern', 'kern.info.x', 'a.critical', ''];
  for (const rk of keys) ch.publish(ex, rk, Buffer.from(rk === '' ? '(empty)' : rk));
  await ch.waitForConfirms();
  const got = {};
  for (const [name, q] of Object.entries(queues)) got[name] = await drain(ch, q);
  await ch.unbindQueue(queues.rabbitOrLazy, ex, 'lazy.#');
  ch.publish(ex, 'lazy.brown.fox', Buffer.from('after-unbind'));
  await ch.waitForConfirms();
  got.afterUnbind = await drain(ch, queues.rabbitOrLazy);
  await ch.close();
  await cleanup(conn, { queues: Object.values(queues), exchanges: [ex] });
  return got;
}

function fib(n) {
  let [a, b] = [0, 1];
  for (let i = 0; i < n; i++) [a, b] = [b, a + b];
  return a;
}

// Tutorial six: RPC, with an exclusive callback queue and with direct reply-to.
async function rpc(conn) {
  const rpcQueue = uniq('rpc');
  const sconn = await amqp.connect(process.argv[2]);
  const server = await sconn.createChannel();
  watch(server);
  await server.assertQueue(rpcQueue, { durable: false });
  await server.prefetch(1);
  const replyTos = [];
  await server.consume(rpcQueue, (msg) => {
    const n = parseInt(msg.content.toString(), 10);
    replyTos.push(msg.properties.replyTo);
    server.sendToQueue(msg.properties.replyTo, Buffer.from(String(fib(n))),
      { correlationId: msg.properties.correlationId });
    server.ack(msg);
  });

  async function call(ch, replyTo, ns) {
    const waiting = new Map();
    const unknown = [];
    const { consumerTag } = await ch.consume(replyTo, (msg) => {
      const w = waiting.get(msg.properties.correlationId);
      if (w) w.resolve(msg); else unknown.push(msg.properties.correlationId);
    }, { noAck: true });
    const results = [];
    for (const n of ns) {
      const cid = crypto.randomUUID();
      const d = deferred(`the reply to fib(${n})`);
      waiting.set(cid, d);
      ch.sendToQueue(rpcQueue, Buffer.from(String(n)), { correlationId: cid, replyTo });
      const msg = await d.promise;
      results.push({ n, result: parseInt(msg.content.toString(), 10),
                     correlationId: msg.properties.correlationId === cid,
                     exchange: msg.fields.exchange, redelivered: msg.fields.redelivered });
    }
    return { consumerTag, results, unknown };
  }

  // An exclusive, server-named callback queue.
  const classicCh = await conn.createChannel();
  watch(classicCh);
  const callbackQueue = (await classicCh.assertQueue('', { exclusive: true })).queue;
  const classic = await call(classicCh, callbackQueue, [10, 20, 30]);

  // Direct reply-to: consume (noAck) on the pseudo-queue first, then publish on the same channel.
  const directCh = await conn.createChannel();
  const directErrors = watch(directCh);
  const direct = await call(directCh, 'amq.rabbitmq.reply-to', [1, 2, 40, 50]);

  await directCh.close();
  await classicCh.close();
  await sconn.close();
  await cleanup(conn, { queues: [rpcQueue] });
  const replyTo = 'amq.rabbitmq.reply-to';
  return {
    classic: { results: classic.results, unknown: classic.unknown },
    direct: { results: direct.results, unknown: direct.unknown, errors: directErrors,
              consumerTag: typeof direct.consumerTag === 'string' && direct.consumerTag.length > 0 },
    serverSawReplyTo: replyTos.map((r) => (r === callbackQueue ? 'callback-queue'
      : r.startsWith(`${replyTo}.`) && r.length > replyTo.length + 1 ? 'direct-reply-to' : r)),
  };
}

// A confirm channel: 1000 publishes, one waitForConfirms.
async function confirms(conn) {
  const q = uniq('confirms');
  const n = 1000;
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertQueue(q, { durable: true });
  let acked = 0;
  let nacked = 0;
  for (let i = 0; i < n; i++) {
    ch.sendToQueue(q, Buffer.from(`m-${i}`), { persistent: i % 2 === 0 }, (err) => {
      if (err === null) acked += 1; else nacked += 1;
    });
  }
  await ch.waitForConfirms();
  const counted = await ch.checkQueue(q);
  const bodies = [];
  const all = deferred('1000 deliveries');
  const { consumerTag } = await ch.consume(q, (msg) => {
    bodies.push(msg.content.toString());
    if (bodies.length === n) all.resolve();
  }, { noAck: true });
  await all.promise;
  await ch.cancel(consumerTag);
  const expected = Array.from({ length: n }, (_, i) => `m-${i}`);
  const deleted = await ch.deleteQueue(q);
  await ch.close();
  return {
    acked, nacked,
    messageCount: counted.messageCount,
    received: bodies.length,
    inOrder: JSON.stringify(bodies) === JSON.stringify(expected),
    deletedMessageCount: deleted.messageCount,
  };
}

// A mandatory publish that no queue takes comes back as basic.return (312 NO_ROUTE) before its ack.
async function mandatory(conn) {
  const ex = uniq('nowhere');
  const missing = uniq('no-such-queue');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertExchange(ex, 'direct', { durable: false });
  const returned = [];
  ch.on('return', (msg) => returned.push({
    replyCode: msg.fields.replyCode, replyText: msg.fields.replyText,
    exchange: msg.fields.exchange === ex ? 'the-exchange' : msg.fields.exchange,
    routingKey: msg.fields.routingKey === missing ? 'the-missing-queue' : msg.fields.routingKey,
    body: msg.content.toString(), messageId: msg.properties.messageId,
    headers: msg.properties.headers,
  }));
  ch.publish(ex, 'unbound-key', Buffer.from('lost-1'), { mandatory: true, messageId: 'id-1',
                                                          headers: { attempt: 1 } });
  ch.publish(ex, 'unbound-key', Buffer.from('dropped'), { mandatory: false, messageId: 'id-2' });
  ch.sendToQueue(missing, Buffer.from('lost-2'), { mandatory: true, messageId: 'id-3' });
  await ch.waitForConfirms();
  const returnsAtConfirm = returned.length;
  await sleep(200);
  await ch.deleteExchange(ex);
  await ch.close();
  return { returnsAtConfirm, returned };
}

// basic.nack and basic.reject with requeue=false dead-letter into a DLX; x-death records it.
async function deadLetter(conn) {
  const dlx = uniq('dlx');
  const dlq = uniq('dlq');
  const q = uniq('work');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertExchange(dlx, 'fanout', { durable: false });
  await ch.assertQueue(dlq, { durable: false });
  await ch.bindQueue(dlq, dlx, '');
  await ch.assertQueue(q, { durable: false, deadLetterExchange: dlx });
  for (const body of ['nacked', 'rejected', 'requeued']) {
    ch.sendToQueue(q, Buffer.from(body), { headers: { original: body }, messageId: body });
  }
  await ch.waitForConfirms();
  const m1 = await ch.get(q);
  const m2 = await ch.get(q);
  const m3 = await ch.get(q);
  ch.nack(m1, false, false);
  ch.reject(m2, false);
  ch.nack(m3, false, true); // requeued, not dead-lettered
  const again = await ch.get(q);
  ch.ack(again);
  const consumed = deferred('two dead-lettered messages');
  const dead = [];
  await ch.consume(dlq, (msg) => {
    dead.push(msg);
    if (dead.length === 2) consumed.resolve();
  }, { noAck: true });
  await consumed.promise;
  await sleep(100);
  const now = Math.floor(Date.now() / 1000);
  const names = { [q]: 'the-queue', [dlx]: 'the-dlx', [dlq]: 'the-dlq' };
  const name = (s) => names[s] ?? s;
  const out = dead.map((msg) => {
    const h = msg.properties.headers;
    return {
      body: msg.content.toString(),
      messageId: msg.properties.messageId,
      exchange: name(msg.fields.exchange),
      routingKey: name(msg.fields.routingKey),
      original: h.original,
      xDeath: h['x-death'].map((d) => ({
        keys: Object.keys(d).sort(),
        count: d.count, reason: d.reason, queue: name(d.queue), exchange: name(d.exchange),
        routingKeys: d['routing-keys'].map(name),
        timeIsTimestamp: d.time !== undefined && d.time['!'] === 'timestamp',
        timeIsNow: d.time !== undefined && Math.abs(d.time.value - now) < 60,
      })),
      firstDeath: { reason: h['x-first-death-reason'], queue: name(h['x-first-death-queue']),
                    exchange: name(h['x-first-death-exchange']) },
    };
  });
  const left = await ch.checkQueue(q);
  await ch.close();
  await cleanup(conn, { queues: [q, dlq], exchanges: [dlx] });
  return {
    requeued: { body: again.content.toString(), redelivered: again.fields.redelivered },
    dead: out,
    workQueueLeft: left.messageCount,
  };
}

// Every basic property, and headers of every field type amqplib writes, through basic.get and
// basic.deliver; and a message without properties arrives without any.
async function properties(conn) {
  const q = uniq('props');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertQueue(q, { durable: false });
  const headers = {
    string: 'héllo ✓',
    byte: 7, short: 1000, int: 100000, long: 2 ** 40, negative: -42, negLong: -(2 ** 35),
    double: 3.25, true: true, false: false, void: null,
    array: [1, 'two', false, 2.5, { inner: 'x' }, [3, [4]], null],
    emptyArray: [],
    nested: { level1: { level2: { deep: 'yes', n: 9 } }, list: ['a', 'b'], empty: {} },
    bytes: Buffer.from([0, 1, 2, 255]),
    timestamp: { '!': 'timestamp', value: 1700000000 },
    float: { '!': 'float', value: 1.5 },
    uint32: { '!': 'uint32', value: 4000000000 },
    decimal: { '!': 'decimal', value: { places: 2, digits: 12345 } },
  };
  const options = {
    contentType: 'application/json', contentEncoding: 'utf-8', headers, deliveryMode: 2,
    priority: 7, correlationId: 'corr-42', replyTo: 'reply-here', expiration: '60000',
    messageId: 'msg-42', timestamp: 1700000123, type: 'order.created', appId: 'hare-tests',
  };
  ch.sendToQueue(q, Buffer.from('{"id": 42}'), options);
  ch.sendToQueue(q, Buffer.from('{"id": 42}'), options);
  ch.sendToQueue(q, Buffer.from('bare'));
  await ch.waitForConfirms();
  const viaGet = await ch.get(q, { noAck: true });
  const got = deferred('two deliveries');
  const delivered = [];
  await ch.consume(q, (msg) => {
    delivered.push(msg);
    if (delivered.length === 2) got.resolve();
  }, { noAck: true });
  await got.promise;
  const [viaDeliver, bare] = delivered;
  await ch.deleteQueue(q);
  await ch.close();
  return {
    sent: options,
    viaGet: { body: viaGet.content.toString(), properties: setProps(viaGet.properties) },
    viaDeliver: { body: viaDeliver.content.toString(), properties: setProps(viaDeliver.properties) },
    bare: { body: bare.content.toString(), properties: setProps(bare.properties) },
  };
}

// A channel error (checkQueue on a missing queue) closes that channel with 404; the connection and
// new channels on it go on working.
async function channelError(conn) {
  const missingQueue = uniq('missing-queue');
  const missingExchange = uniq('missing-exchange');
  const connErrors = [];
  conn.on('error', (err) => connErrors.push(err.message));

  async function failOn(call) {
    const ch = await conn.createChannel();
    const emitted = watch(ch);
    const closed = deferred('channel close');
    ch.on('close', () => closed.resolve());
    let error = null;
    try {
      await call(ch);
    } catch (err) {
      error = { code: err.code, classId: err.classId, methodId: err.methodId, message: err.message };
    }
    await closed.promise;
    let afterClose = null;
    try {
      await ch.assertQueue('', { exclusive: true });
    } catch (err) {
      afterClose = err.message;
    }
    return { error, emitted, afterCloseRejected: afterClose !== null };
  }

  const queue = await failOn((ch) => ch.checkQueue(missingQueue));
  const ch2 = await conn.createChannel();
  watch(ch2);
  const tmp = (await ch2.assertQueue('', { exclusive: true })).queue;
  ch2.sendToQueue(tmp, Buffer.from('still-usable'));
  await sleep(50);
  const msg = await ch2.get(tmp, { noAck: true });
  const exchange = await failOn((ch) => ch.checkExchange(missingExchange));
  const ch3 = await conn.createChannel();
  watch(ch3);
  const ok = await ch3.checkQueue(tmp);
  await ch3.close();
  await ch2.deleteQueue(tmp);
  await ch2.close();
  const mentions = (e, name) => e !== null && e.message.includes(name);
  return {
    queue: { ...queue, mentionsName: mentions(queue.error, missingQueue) },
    exchange: { ...exchange, mentionsName: mentions(exchange.error, missingExchange) },
    newChannel: { body: msg === false ? null : msg.content.toString(), checkQueueAfter: ok.queue === tmp },
    connErrors,
    names: { queue: missingQueue, exchange: missingExchange },
  };
}

// basic.qos with global: a channel-wide limit across consumers, beside the per-consumer one.
async function prefetchGlobal(conn) {
  const qs = [uniq('pg-a'), uniq('pg-b')];
  const setup = await conn.createConfirmChannel();
  watch(setup);
  for (const q of qs) {
    await setup.assertQueue(q, { durable: false });
    for (let i = 0; i < 10; i++) setup.sendToQueue(q, Buffer.from(`${i}`));
  }
  await setup.waitForConfirms();

  async function run(limits) {
    const ch = await conn.createChannel();
    watch(ch);
    for (const [count, global] of limits) await ch.prefetch(count, global);
    const held = qs.map(() => []);
    for (const [i, q] of qs.entries()) await ch.consume(q, (msg) => held[i].push(msg));
    await sleep(300);
    const first = held.map((h) => h.length);
    // One ack frees one slot of the channel-wide window.
    ch.ack(held.find((h) => h.length > 0)[0]);
    await sleep(300);
    const afterOneAck = held.map((h) => h.length);
    await ch.close(); // everything unacked goes back
    await sleep(50);
    return { first, afterOneAck, total: first.reduce((a, b) => a + b, 0),
             totalAfterOneAck: afterOneAck.reduce((a, b) => a + b, 0) };
  }

  const globalOnly = await run([[3, true]]);
  const both = await run([[2, false], [3, true]]);
  const perConsumer = await run([[2, false]]);
  const counts = [];
  for (const q of qs) counts.push((await setup.checkQueue(q)).messageCount);
  await setup.close();
  await cleanup(conn, { queues: qs });
  return { globalOnly, both, perConsumer, readyAfter: counts };
}

// basic.cancel: no more deliveries to the cancelled consumer; the rest stays in the queue.
async function cancel(conn) {
  const q = uniq('cancel');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertQueue(q, { durable: false });
  const got = [];
  const first = deferred('the first delivery');
  const { consumerTag } = await ch.consume(q, (msg) => {
    got.push(msg === null ? 'cancelled-by-server' : msg.content.toString());
    first.resolve();
  }, { noAck: true });
  ch.sendToQueue(q, Buffer.from('before-cancel'));
  await ch.waitForConfirms();
  await first.promise;
  await ch.cancel(consumerTag); // (amqplib 0.10's cancel() resolves to undefined, not basic.cancel-ok)
  for (let i = 0; i < 3; i++) ch.sendToQueue(q, Buffer.from(`after-cancel-${i}`));
  await ch.waitForConfirms();
  await sleep(300);
  const counted = await ch.checkQueue(q);
  const rest = await drain(ch, q);
  await ch.deleteQueue(q);
  await ch.close();
  return {
    got,
    afterCancel: { messageCount: counted.messageCount, consumerCount: counted.consumerCount },
    rest,
  };
}

// A 3 MB body (many frames) arrives byte-exact, through basic.deliver and basic.get.
async function largeMessage(conn) {
  const q = uniq('large');
  const size = 3 * 1024 * 1024;
  const body = crypto.randomBytes(size);
  const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
  const ch = await conn.createConfirmChannel();
  watch(ch);
  await ch.assertQueue(q, { durable: false });
  ch.sendToQueue(q, body, { contentType: 'application/octet-stream', messageId: 'big-1' });
  ch.sendToQueue(q, body, { messageId: 'big-2' });
  await ch.waitForConfirms();
  const viaGet = await ch.get(q, { noAck: true });
  const got = deferred('the large message', 20000);
  const { consumerTag } = await ch.consume(q, (msg) => got.resolve(msg), { noAck: true });
  const msg = await got.promise;
  await ch.cancel(consumerTag);
  await ch.deleteQueue(q);
  await ch.close();
  const describe = (m) => ({ length: m.content.length, equal: m.content.equals(body),
                             sha256Equal: sha(m.content) === sha(body),
                             messageId: m.properties.messageId });
  return { sent: size, viaGet: viaGet === false ? null : describe(viaGet), viaDeliver: describe(msg) };
}

const SCENARIOS = {
  hello, work_queue: workQueue, pubsub, topic, rpc, confirms, mandatory, dead_letter: deadLetter,
  properties, channel_error: channelError, prefetch_global: prefetchGlobal, cancel,
  large_message: largeMessage,
};

async function main() {
  const [url, name] = process.argv.slice(2);
  const scenario = SCENARIOS[name];
  if (!url || !scenario) {
    throw new Error(`usage: node scenarios.js <url> <${Object.keys(SCENARIOS).join('|')}>`);
  }
  const conn = await amqp.connect(url);
  try {
    const result = await scenario(conn);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await conn.close().catch(() => {});
  }
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
