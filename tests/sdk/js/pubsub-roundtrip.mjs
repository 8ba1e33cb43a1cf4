// Pub/sub round trip with the official Dapr JS SDK over HTTP: DaprServer subscribes (plain,
// routed with a CEL rule, dead-letter topic), DaprClient publishes (JSON, text, bulk, CloudEvent
// metadata). Exits 0 when every message arrived as expected, 1 otherwise.
// Env: DAPR_HTTP_PORT (the sidecar), APP_PORT (where DaprServer listens).
import { CommunicationProtocolEnum, DaprClient, DaprServer, DaprPubSubStatusEnum } from "@dapr/dapr";

const daprHost = "127.0.0.1";
const daprPort = process.env.DAPR_HTTP_PORT;
const appPort = process.env.APP_PORT;
const fail = (msg) => {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 30000).unref();

const server = new DaprServer({
  serverHost: "127.0.0.1",
  serverPort: appPort,
  communicationProtocol: CommunicationProtocolEnum.HTTP,
  clientOptions: { daprHost, daprPort, communicationProtocol: CommunicationProtocolEnum.HTTP },
});

const orders = [];
const widgets = [];
const others = [];
const dead = [];
let retried = 0;

await server.pubsub.subscribe("pubsub", "orders", async (data) => {
  orders.push(data);
});
await server.pubsub.subscribeWithOptions("pubsub", "routed", {
  route: {
    rules: [{ match: 'event.type == "widget"', path: "/widgets" }],
    default: "/others",
  },
});
server.pubsub.subscribeToRoute("pubsub", "routed", "widgets", async (data) => {
  widgets.push(data);
});
server.pubsub.subscribeToRoute("pubsub", "routed", "others", async (data) => {
  others.push(data);
});
await server.pubsub.subscribeWithOptions("pubsub", "flaky", {
  deadLetterTopic: "flaky-dead",
  callback: async (data) => {
    if (data.poison) {
      return DaprPubSubStatusEnum.DROP;
    }
    retried += 1;
    return retried === 1 ? DaprPubSubStatusEnum.RETRY : DaprPubSubStatusEnum.SUCCESS;
  },
});
await server.pubsub.subscribe("pubsub", "flaky-dead", async (data, headers) => {
  dead.push(data);
});
const bulkReceived = [];
await server.pubsub.subscribeBulk(
  "pubsub",
  "bulk-topic",
  async (data) => {
    bulkReceived.push(data);
  },
  { maxMessagesCount: 10, maxAwaitDurationMs: 200 },
);
await server.start();

const client = new DaprClient({ daprHost, daprPort, communicationProtocol: CommunicationProtocolEnum.HTTP });
const check = (r, what) => {
  if (r && r.error) fail(`${what}: ${r.error}`);
};
check(await client.pubsub.publish("pubsub", "orders", { orderId: 1 }), "publish json");
check(await client.pubsub.publish("pubsub", "orders", "plain text"), "publish text");
const bulk = await client.pubsub.publishBulk("pubsub", "orders", [{ orderId: 2 }, { orderId: 3 }]);
if (bulk.failedMessages && bulk.failedMessages.length > 0) fail(`bulk: ${JSON.stringify(bulk)}`);
check(await client.pubsub.publish("pubsub", "routed", { kind: "w" }, { metadata: { "cloudevent.type": "widget" } }), "widget");
check(await client.pubsub.publish("pubsub", "routed", { kind: "o" }), "other");
const bulkOut = await client.pubsub.publishBulk("pubsub", "bulk-topic", [{ b: 1 }, { b: 2 }, { b: 3 }]);
if (bulkOut.failedMessages && bulkOut.failedMessages.length > 0) fail(`bulk-topic: ${JSON.stringify(bulkOut)}`);
check(await client.pubsub.publish("pubsub", "flaky", { n: 1 }), "flaky");
check(await client.pubsub.publish("pubsub", "flaky", { poison: true }), "poison");

const deadline = Date.now() + 20000;
while (Date.now() < deadline) {
  if (orders.length >= 4 && widgets.length >= 1 && others.length >= 1 && retried >= 2 && dead.length >= 1 && bulkReceived.length >= 3) break;
  await new Promise((r) => setTimeout(r, 50));
}
const ids = orders.map((o) => (typeof o === "object" ? o.orderId : o)).sort();
if (JSON.stringify(ids) !== JSON.stringify([1, 2, 3, "plain text"])) fail(`orders: ${JSON.stringify(orders)}`);
if (widgets.length !== 1 || widgets[0].kind !== "w") fail(`widgets: ${JSON.stringify(widgets)}`);
if (others.length !== 1 || others[0].kind !== "o") fail(`others: ${JSON.stringify(others)}`);
if (retried !== 2) fail(`RETRY then SUCCESS expected 2 deliveries, got ${retried}`);
if (dead.length !== 1 || !dead[0].poison) fail(`dead letters: ${JSON.stringify(dead)}`);
const bulkValues = bulkReceived.map((d) => d.b).sort();
if (JSON.stringify(bulkValues) !== "[1,2,3]") fail(`bulk subscribe: ${JSON.stringify(bulkReceived)}`);
console.log("OK pubsub round trip");
await server.stop();
process.exit(0);
