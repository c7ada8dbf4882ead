// The server's OpenAI-compatible API through the official `openai` client (node:test).
// tests/server/openai_client_test.py starts the server on the demo model and runs this
// with MF_OPENAI_BASE_URL, MF_METRICS_URL, MF_API_KEY and MF_EXPECTED_FILE (what gRPC
// Generate returned for the same requests).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import OpenAI from 'openai';

const expected = JSON.parse(readFileSync(process.env.MF_EXPECTED_FILE, 'utf8'));
const client = new OpenAI({ baseURL: process.env.MF_OPENAI_BASE_URL, apiKey: process.env.MF_API_KEY, maxRetries: 0 });
const PROMPT = expected.prompt;
const CHAT = [{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: 'Name a colour.' }];

async function metric(name) {
  const text = await (await fetch(process.env.MF_METRICS_URL)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return Number(line.split(' ').pop());
}

async function waitFor(condition, what) {
  const deadline = Date.now() + 20000;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('models lists the served model', async () => {
  const models = [];
  for await (const model of client.models.list()) models.push(model.id);
  assert.deepEqual(models, ['demo']);
});

test('greedy completion equals gRPC Generate, with usage', async () => {
  const completion = await client.completions.create({ model: 'demo', prompt: PROMPT, max_tokens: 24, temperature: 0 });
  assert.equal(completion.choices[0].text, expected.greedy_completion);
  assert.equal(completion.choices[0].finish_reason, 'length');
  assert.equal(completion.usage.completion_tokens, 24);
  assert.equal(completion.usage.total_tokens, completion.usage.prompt_tokens + 24);
});

test('streamed completion deltas concatenate to the same text; usage comes last', async () => {
  const stream = await client.completions.create({
    model: 'demo', prompt: PROMPT, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) text += choice.text;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, expected.greedy_completion);
  assert.equal(usage.completion_tokens, 24);
});

test('chat completion renders the chat template and equals gRPC Generate of the rendered prompt', async () => {
  const chat = await client.chat.completions.create({ model: 'demo', messages: CHAT, max_tokens: 16, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(chat.choices[0].message.content, expected.greedy_chat);
  assert.equal(chat.usage.prompt_tokens, expected.chat_prompt_tokens);
});

test('streamed chat: a role delta first, then content deltas equal to the whole answer', async () => {
  const stream = await client.chat.completions.create({ messages: CHAT, max_tokens: 16, temperature: 0, stream: true });
  const deltas = [];
  let finishReason = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const choice of chunk.choices) {
      deltas.push(choice.delta);
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
  }
  assert.equal(deltas[0].role, 'assistant');
  assert.equal(deltas.map((d) => d.content ?? '').join(''), expected.greedy_chat);
  assert.equal(finishReason, 'length');
});

test('stop strings end the text before them', async () => {
  const stop = expected.greedy_completion.split(' ')[3];
  const completion = await client.completions.create({ prompt: PROMPT, max_tokens: 24, temperature: 0, stop: [stop] });
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.equal(completion.choices[0].text, expected.greedy_completion.slice(0, expected.greedy_completion.indexOf(stop)));
});

test('seeded sampling is reproducible and equals gRPC with the same seed', async () => {
  const request = { prompt: PROMPT, max_tokens: 16, temperature: 0.9, top_p: 0.95, seed: 123 };
  const first = await client.completions.create(request);
  const second = await client.completions.create(request);
  assert.equal(first.choices[0].text, second.choices[0].text);
  assert.equal(first.choices[0].text, expected.seeded_completion);
  const chat = await client.chat.completions.create({ messages: CHAT, max_tokens: 16, temperature: 0.9, top_p: 0.95, seed: 5 });
  const again = await client.chat.completions.create({ messages: CHAT, max_tokens: 16, temperature: 0.9, top_p: 0.95, seed: 5 });
  assert.equal(chat.choices[0].message.content, again.choices[0].message.content);
});

test('chat logprobs come in the chat format', async () => {
  const chat = await client.chat.completions.create({
    messages: CHAT, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const content = chat.choices[0].logprobs.content;
  assert.equal(content.length, 5);
  assert.equal(content.map((c) => c.token).join(''), chat.choices[0].message.content);
  for (const entry of content) {
    assert.equal(entry.top_logprobs.length, 3);
    assert.equal(entry.top_logprobs[0].logprob, entry.logprob);  // greedy: the chosen token is the likeliest
  }
});

test('bad fields get OpenAI errors naming them', async () => {
  const cases = [
    [() => client.completions.create({ prompt: PROMPT, max_tokens: -1 }), 400, 'max_tokens'],
    [() => client.completions.create({ prompt: PROMPT, temperature: -2 }), 400, 'temperature'],
    [() => client.chat.completions.create({ messages: [] }), 400, 'messages'],
    [() => client.chat.completions.create({ messages: CHAT, n: 99 }), 400, 'n'],
    [() => client.completions.create({ model: 'gpt-4', prompt: PROMPT }), 404, 'model'],
  ];
  for (const [call, status, param] of cases) {
    await assert.rejects(call, (error) => {
      assert.ok(error instanceof OpenAI.APIError, String(error));
      assert.equal(error.status, status);
      assert.equal(error.param, param);
      assert.match(error.message, new RegExp(param));
      return true;
    });
  }
});

test('a client that aborts a stream frees its sequence and KV blocks', async () => {
  await waitFor(async () => (await metric('moduleformer_requests_running')) === 0, 'an idle server');
  const idleBlocks = await metric('moduleformer_kv_cache_blocks_used');
  const controller = new AbortController();
  const stream = await client.completions.create(
    { prompt: PROMPT, max_tokens: 3000, ignore_eos: true, stream: true }, { signal: controller.signal });
  let chunks = 0;
  let finished = false;
  try {
    for await (const chunk of stream) {
      if (chunk.choices[0]?.finish_reason) finished = true;
      if (++chunks === 3) {
        assert.equal(await metric('moduleformer_requests_running'), 1);
        controller.abort();
      }
    }
  } catch (error) {
    assert.ok(error instanceof OpenAI.APIUserAbortError || error.name === 'AbortError', String(error));
  }
  assert.ok(chunks >= 3 && !finished, `the stream ended by itself after ${chunks} chunks`);
  await waitFor(async () => (await metric('moduleformer_requests_running')) === 0, 'the aborted request to end');
  assert.equal(await metric('moduleformer_kv_cache_blocks_used'), idleBlocks);
});
