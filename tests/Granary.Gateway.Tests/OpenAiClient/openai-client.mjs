// Drives a Granary gateway with the official `openai` npm package and prints what it saw as one JSON line.
// usage: node openai-client.mjs BASE_URL MODEL KEYED_BASE_URL API_KEY   (OPENAI_MODULE: path of the package's index.mjs)
import { pathToFileURL } from 'node:url';

const [baseURL, model, keyedURL, apiKey] = process.argv.slice(2);
const { default: OpenAI } = await import(pathToFileURL(process.env.OPENAI_MODULE).href);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Tell me about the harvest.' }];

async function failure(call) {
  try {
    await call();
    return null;
  } catch (e) {
    return { name: e.constructor.name, status: e.status ?? null, code: e.code ?? null, type: e.type ?? null, param: e.param ?? null, message: e.message };
  }
}

const result = {};

const whole = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0 });
result.whole = { object: whole.object, content: whole.choices[0].message.content, finish: whole.choices[0].finish_reason, usage: whole.usage };

const stream = await client.chat.completions.create({
  model, messages, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let text = '';
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices.length > 0) {
    text += chunk.choices[0].delta.content ?? '';
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  usage = chunk.usage ?? usage;
}
result.stream = { text, finish, usage, chunks };

const completion = await client.completions.create({ model, prompt: 'The harvest', max_tokens: 5, temperature: 0 });
result.completion = { text: completion.choices[0].text, usage: completion.usage };

result.models = [];
for await (const card of client.models.list()) {
  result.models.push(card.id);
}

result.unknownModel = await failure(() => client.chat.completions.create({ model: 'no-such-model', messages }));
result.badParameter = await failure(() => client.chat.completions.create({ model, messages, n: 2 }));
result.wrongKey = await failure(() => new OpenAI({ baseURL: keyedURL, apiKey: 'wrong', maxRetries: 0 }).models.list());
const keyed = await new OpenAI({ baseURL: keyedURL, apiKey, maxRetries: 0 }).chat.completions.create({ model, messages, max_tokens: 3 });
result.keyed = { usage: keyed.usage };

console.log(JSON.stringify(result));
