// A Node.js workload: the official `openai` package, no proxy or base URL setting.
// Trust comes only from what the environment says (NODE_EXTRA_CA_CERTS).
import OpenAI from 'openai';

const client = new OpenAI({ apiKey: 'sk-node-pod-key', maxRetries: 0, timeout: 30000 });
const r = await client.chat.completions.create({
  model: process.argv[3] ?? 'gpt-4o-mini',
  messages: [{ role: 'user', content: process.argv[2] ?? 'hello from node' }],
});
console.log(JSON.stringify({ reply: r.choices[0].message.content }));
