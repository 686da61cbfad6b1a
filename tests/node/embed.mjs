// The official openai Node SDK as a gateway client, for tests/system/test_node_sdk.py.
//
//   GATEWAY_BASE_URL=http://127.0.0.1:8000/v1 GATEWAY_API_KEY=sk-... \
//     node embed.mjs <model> '<input as JSON: a string or an array of strings>'
//
// Calls client.embeddings.create with the SDK's defaults (no encoding_format, so the SDK asks
// for base64 and decodes it itself) and prints one JSON object on stdout:
//   {"vectors": [[...], ...], "model": "...", "usage": {...}, "sent": [<request bodies>]}
// `sent` is what the SDK put on the wire, seen through its `fetch` option, so the test can
// check the SDK really asked for base64 rather than trusting the SDK's source.
import OpenAI from "openai";

const [model, rawInput] = process.argv.slice(2);
const baseURL = process.env.GATEWAY_BASE_URL;
const apiKey = process.env.GATEWAY_API_KEY;
if (!model || rawInput === undefined || !baseURL || !apiKey) {
  console.error("usage: GATEWAY_BASE_URL=... GATEWAY_API_KEY=... node embed.mjs <model> <input-json>");
  process.exit(2);
}

const sent = [];
const client = new OpenAI({
  baseURL,
  apiKey,
  // A failure should surface at once with the gateway's own error, not after SDK retries.
  maxRetries: 0,
  timeout: 20_000,
  fetch: async (url, init) => {
    sent.push({ url: String(url), body: JSON.parse(init.body) });
    return globalThis.fetch(url, init);
  },
});

try {
  const response = await client.embeddings.create({ model, input: JSON.parse(rawInput) });
  const vectors = response.data.map((item) => item.embedding);
  // JSON.stringify writes each float32 value (held as a float64) in its shortest exact form.
  process.stdout.write(
    JSON.stringify({ vectors, model: response.model, usage: response.usage, sent }) + "\n",
  );
} catch (error) {
  console.error(`embeddings.create failed: ${error?.status ?? ""} ${error?.message ?? error}`);
  process.exit(1);
}
