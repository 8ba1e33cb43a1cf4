// Compatibility check: the official Dapr JS SDK (HTTP protocol) against Tandem's state API.
// Env: DAPR_HTTP_PORT (the sidecar), STATE_STORE (component name, default "statestore").
// Exits non-zero on the first failed check.
import assert from "node:assert/strict";
import { DaprClient, CommunicationProtocolEnum } from "@dapr/dapr";

const store = process.env.STATE_STORE ?? "statestore";
const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort: process.env.DAPR_HTTP_PORT,
  communicationProtocol: CommunicationProtocolEnum.HTTP,
});

async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    console.error(`FAIL ${name}: ${e?.stack ?? e}`);
    process.exit(1);
  }
}

await check("save", async () => {
  const res = await client.state.save(store, [
    { key: "js-a", value: { hello: "world", n: 1, list: [1, 2, 3] } },
    { key: "js-b", value: "plain" },
    { key: "js-c", value: '{"x":1}' },
    { key: "js-u", value: "héllo ✓ 日本 😀" },
  ]);
  assert.equal(res.error, undefined, `save failed: ${res.error}`);
});

await check("get", async () => {
  assert.deepEqual(await client.state.get(store, "js-a"), { hello: "world", n: 1, list: [1, 2, 3] });
  assert.equal(await client.state.get(store, "js-b"), "plain");
  assert.equal(await client.state.get(store, "js-c"), '{"x":1}');
  assert.equal(await client.state.get(store, "js-u"), "héllo ✓ 日本 😀");
  assert.equal(await client.state.get(store, "js-missing"), "");
});

let etagA;
await check("getBulk", async () => {
  const items = await client.state.getBulk(store, ["js-a", "js-b", "js-missing"]);
  assert.equal(items.length, 3);
  const byKey = Object.fromEntries(items.map((i) => [i.key, i]));
  assert.deepEqual(byKey["js-a"].data, { hello: "world", n: 1, list: [1, 2, 3] });
  assert.equal(byKey["js-b"].data, "plain");
  assert.equal(byKey["js-missing"].data, undefined);
  assert.ok(byKey["js-a"].etag, "bulk get returns an etag");
  etagA = byKey["js-a"].etag;
});

await check("save with etag", async () => {
  const ok = await client.state.save(store, [{ key: "js-a", value: { v: 2 }, etag: etagA }]);
  assert.equal(ok.error, undefined, `save with the current etag failed: ${ok.error}`);
  const stale = await client.state.save(store, [{ key: "js-a", value: { v: 3 }, etag: etagA }]);
  assert.ok(stale.error, "a stale etag must fail");
  assert.match(String(stale.error), /409/);
  assert.deepEqual(await client.state.get(store, "js-a"), { v: 2 });
});

await check("save with ttl metadata", async () => {
  const res = await client.state.save(store, [{ key: "js-ttl", value: 1 }], {
    metadata: { ttlInSeconds: "300" },
  });
  assert.equal(res.error, undefined);
  const [item] = await client.state.getBulk(store, ["js-ttl"]);
  assert.ok(item.metadata?.ttlExpireTime, "ttlExpireTime is reported");
});

await check("delete", async () => {
  const res = await client.state.delete(store, "js-b");
  assert.equal(res.error, undefined);
  assert.equal(await client.state.get(store, "js-b"), "");
});

await check("transaction", async () => {
  await client.state.transaction(store, [
    { operation: "upsert", request: { key: "js-t1", value: { t: 1 } } },
    { operation: "delete", request: { key: "js-c" } },
    { operation: "upsert", request: { key: "js-t2", value: "two" } },
  ]);
  assert.deepEqual(await client.state.get(store, "js-t1"), { t: 1 });
  assert.equal(await client.state.get(store, "js-t2"), "two");
  assert.equal(await client.state.get(store, "js-c"), "");
});

console.log("all state checks passed");
process.exit(0);
