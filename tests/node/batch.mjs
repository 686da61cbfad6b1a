// The official openai Node SDK running a Batch API round trip, for tests/system/test_node_sdk.py.
//
//   GATEWAY_BASE_URL=http://127.0.0.1:8000/v1 GATEWAY_API_KEY=sk-... node batch.mjs <file.jsonl>
//
// Uploads the file as a stream (file part first, as the SDK sends it), creates a /v1/embeddings
// batch, polls it to the end, lists batches and files with auto-pagination, and prints one JSON
// object on stdout: {"file": FileObject, "batch": Batch, "listed_batches": [ids],
// "listed_files": [ids], "output": "<the output file's text>"}.
import fs from "node:fs";
import OpenAI from "openai";

const [path] = process.argv.slice(2);
const client = new OpenAI({
  baseURL: process.env.GATEWAY_BASE_URL,
  apiKey: process.env.GATEWAY_API_KEY,
  maxRetries: 0,
  timeout: 20_000,
});

try {
  const file = await client.files.create({ file: fs.createReadStream(path), purpose: "batch" });
  let batch = await client.batches.create({
    input_file_id: file.id,
    endpoint: "/v1/embeddings",
    completion_window: "24h",
    metadata: { from: "node" },
  });
  const deadline = Date.now() + 30_000;
  while (!["completed", "failed", "expired", "cancelled"].includes(batch.status)) {
    if (Date.now() > deadline) throw new Error(`batch still ${batch.status}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    batch = await client.batches.retrieve(batch.id);
  }
  const listedBatches = [];
  for await (const item of client.batches.list({ limit: 1 })) listedBatches.push(item.id);
  const listedFiles = [];
  for await (const item of client.files.list({ limit: 1 })) listedFiles.push(item.id);
  const output = batch.output_file_id
    ? await (await client.files.content(batch.output_file_id)).text()
    : "";
  process.stdout.write(
    JSON.stringify({ file, batch, listed_batches: listedBatches, listed_files: listedFiles, output }) +
      "\n",
  );
} catch (error) {
  console.error(`batch round trip failed: ${error?.status ?? ""} ${error?.message ?? error}`);
  process.exit(1);
}
