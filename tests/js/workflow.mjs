// A Chroma workflow with the official JavaScript client (npm `chromadb`, pinned in
// package.json), written out as a JSON transcript: run once against Chroma directly and once
// through chroma-shift (tests/clients.rs), the two transcripts must be equal.
//
// Every step is recorded as {"step": name, "result": ...} or {"step": name, "error": {"type",
// "message"}}. Embeddings are passed explicitly: no embedding function runs (the default one
// would download a model, and the network is closed).
//
// Usage: node workflow.mjs --url http://127.0.0.1:PORT --out FILE [--prefix NAME]

import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { ChromaClient } from "chromadb";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    out: { type: "string" },
    prefix: { type: "string", default: "js" },
  },
});
if (!args.url || !args.out) {
  console.error("usage: node workflow.mjs --url URL --out FILE [--prefix NAME]");
  process.exit(2);
}

const UUID = /[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/g;
// Keys whose values are wall-clock times, which two servers never share.
const TIMESTAMP_KEYS = new Set(["created_at", "updated_at", "timestamp"]);

// UUIDs get placeholders in order of first appearance, so one collection keeps one
// placeholder across steps; floats are rounded (two HNSW graphs may differ in the last bits).
// The server's own URL (the client names it in some errors) differs by nature too.
const placeholders = new Map();
function text(value) {
  return value.replace(/https?:\/\/[^/\s]+/g, "<url>").replace(UUID, (uuid) => {
    const key = uuid.toLowerCase();
    if (!placeholders.has(key)) placeholders.set(key, `<uuid-${placeholders.size + 1}>`);
    return placeholders.get(key);
  });
}
function normalize(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "string") return text(value);
  if (typeof value === "number") return Number.isInteger(value) ? value : Math.round(value * 1e5) / 1e5;
  if (typeof value === "boolean") return value;
  if (Array.isArray(value) || ArrayBuffer.isView(value)) return Array.from(value, normalize);
  if (typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) {
      if (!TIMESTAMP_KEYS.has(key) && typeof value[key] !== "function") out[key] = normalize(value[key]);
    }
    return out;
  }
  return String(value);
}

const transcript = [];
async function step(name, action) {
  let entry;
  try {
    entry = { step: name, result: normalize(await action()) };
  } catch (error) {
    entry = { step: name, error: { type: error?.name ?? "Error", message: text(String(error?.message ?? error)) } };
  }
  transcript.push(entry);
  return entry;
}

// What a collection object says of itself (not its methods or client).
function view(collection) {
  return { id: collection.id, name: collection.name, metadata: collection.metadata ?? null };
}
// A get's or query's answer as plain data.
function rows(result) {
  const { ids, documents, metadatas, embeddings, distances, include } = result;
  return { ids, documents, metadatas, embeddings, distances, include };
}

const url = new URL(args.url);
const client = new ChromaClient({ host: url.hostname, port: Number(url.port), ssl: false });
const noEmbedding = { embeddingFunction: null };
const name = `${args.prefix}-docs`;
let docs;

await step("heartbeat", async () => ({ isNumber: typeof (await client.heartbeat()) === "number" }));
await step("create_collection", async () => {
  docs = await client.createCollection({ name, metadata: { topic: "docs", rank: 1 }, ...noEmbedding });
  return view(docs);
});
await step("create_collection_duplicate", async () =>
  view(await client.createCollection({ name, ...noEmbedding })),
);
await step("get_collection", async () => view(await client.getCollection({ name, ...noEmbedding })));
await step("get_collection_missing", async () =>
  view(await client.getCollection({ name: `${args.prefix}-missing`, ...noEmbedding })),
);
await step("add", () =>
  docs.add({
    ids: ["a", "b", "c", "d", "e"],
    embeddings: [
      [1.0, 0.0, 0.0],
      [0.0, 1.0, 0.0],
      [0.0, 0.0, 1.0],
      [0.5, 0.5, 0.0],
      [0.1, 0.2, 0.3],
    ],
    metadatas: [
      { rank: 1, color: "red" },
      { rank: 2, color: "green" },
      { rank: 3, color: "blue", flag: true },
      { rank: 4, color: "red", weight: 0.5 },
      { rank: 5, color: "green", flag: false },
    ],
    documents: ["alpha apples", "bravo bananas", "charlie cherries", "delta dates", "echo elderberries"],
  }),
);
await step("count_after_add", () => docs.count());
await step("add_dimension_mismatch", () => docs.add({ ids: ["z"], embeddings: [[1.0, 2.0]], documents: ["bad"] }));
await step("get_all", async () =>
  rows(await docs.get({ include: ["embeddings", "metadatas", "documents"] })),
);
await step("get_where", async () =>
  rows(await docs.get({ where: { color: "red" }, include: ["metadatas", "documents"] })),
);
await step("get_where_and", async () =>
  rows(await docs.get({ where: { $and: [{ rank: { $gte: 2 } }, { color: { $in: ["green", "blue"] } }] } })),
);
await step("get_where_document", async () =>
  rows(await docs.get({ whereDocument: { $contains: "apples" }, include: ["documents"] })),
);
await step("query", async () =>
  rows(
    await docs.query({
      queryEmbeddings: [[1.0, 0.1, 0.0], [0.0, 0.0, 0.9]],
      nResults: 3,
      include: ["distances", "metadatas", "documents"],
    }),
  ),
);
await step("query_where", async () =>
  rows(await docs.query({ queryEmbeddings: [[0.4, 0.6, 0.0]], nResults: 2, where: { color: "green" } })),
);
await step("update", () =>
  docs.update({
    ids: ["b"],
    embeddings: [[0.0, 0.9, 0.1]],
    metadatas: [{ rank: 20, color: "teal" }],
    documents: ["bravo blueberries"],
  }),
);
await step("upsert", () =>
  docs.upsert({
    ids: ["c", "f"],
    embeddings: [
      [0.0, 0.2, 0.8],
      [0.3, 0.3, 0.3],
    ],
    metadatas: [{ rank: 30 }, { rank: 6, color: "red" }],
    documents: ["charlie chestnuts", "foxtrot figs"],
  }),
);
await step("get_after_update", async () =>
  rows(await docs.get({ ids: ["b", "c", "f"], include: ["embeddings", "metadatas", "documents"] })),
);
await step("delete_ids", () => docs.delete({ ids: ["a"] }));
await step("delete_where", () => docs.delete({ where: { color: "red" } }));
await step("count_after_delete", () => docs.count());
await step("get_after_delete", async () => rows(await docs.get({ include: ["metadatas", "documents"] })));
await step("modify_collection", async () => {
  await docs.modify({ metadata: { topic: "docs", rank: 2 } });
  return view(await client.getCollection({ name, ...noEmbedding }));
});
await step("list_collections", async () =>
  (await client.listCollections()).map(view).sort((x, y) => x.name.localeCompare(y.name)),
);
await step("count_collections", () => client.countCollections());
await step("create_scratch", async () =>
  view(await client.createCollection({ name: `${args.prefix}-scratch`, ...noEmbedding })),
);
await step("delete_collection", () => client.deleteCollection({ name: `${args.prefix}-scratch` }));
await step("delete_collection_missing", () => client.deleteCollection({ name: `${args.prefix}-scratch` }));

writeFileSync(args.out, JSON.stringify(transcript, null, 1));
