// Per-test recordings for node:test through llmreel's control API (docs/control.md).
//
//   llmreel run --reverse https://api.openai.com@0 -- node --test examples/node/
//   llmreel run --mode offline --reverse https://api.openai.com@0 -- node --test examples/node/
//
// `llmreel run` sets OPENAI_BASE_URL (Node's fetch ignores HTTPS_PROXY, so reverse mode it is)
// and LLMREEL_CONTROL_URL. Each test gets its own context: its calls carry the context's token
// in the `llmreel-context` header and land in the test's own namespace, like a cassette per test.
import { test } from "node:test";
import assert from "node:assert/strict";

const control = process.env.LLMREEL_CONTROL_URL;
const base = process.env.OPENAI_BASE_URL;

async function llmreelContext(namespace) {
  const reply = await fetch(`${control}/contexts`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ namespace }),
  });
  assert.equal(reply.status, 201);
  return (await reply.json()).token;
}

async function ask(token, prompt) {
  const reply = await fetch(`${base}/chat/completions`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      authorization: `Bearer ${process.env.OPENAI_API_KEY}`,
      "llmreel-context": token,
    },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: prompt }] }),
  });
  return { status: reply.status, cache: reply.headers.get("llmreel-cache"), body: await reply.json() };
}

async function exchanges(token) {
  const reply = await fetch(`${control}/exchanges?since=0&context=${token}`);
  return (await reply.json()).items;
}

test("the agent greets the user", async () => {
  const token = await llmreelContext("node-greets");
  const answer = await ask(token, "Say hello to the reel");
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.ok(answer.body.choices[0].message.content.length > 0);
  const calls = await exchanges(token);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].namespace, "node-greets");
});

test("the agent answers the same prompt in its own namespace", async () => {
  const token = await llmreelContext("node-same-prompt");
  const answer = await ask(token, "Say hello to the reel");
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  const calls = await exchanges(token);
  assert.deepEqual(calls.map((c) => c.namespace), ["node-same-prompt"]);
});
