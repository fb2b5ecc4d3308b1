// Talks to ai-lb through Ollama's API with the official ollama npm client
// (ollama-js), as many Ollama hosts behind one address: list (the union of
// the nodes' models, the same on every call), ps, version, show of every
// model, streamed chat with tools and a tool-result turn, embed, and the
// errors (an unknown model, a refused pull). Prints one JSON line:
// {"ok":true,"models":[...],"chats":{"<model>":["<node>",...]}}.
//
//   AI_LB_URL=http://127.0.0.1:8000 AI_LB_MODELS=a:latest,b:8b AI_LB_EMBED_MODEL=e node ollama_client.mjs
import { Ollama } from "ollama";

const host = process.env.AI_LB_URL ?? "http://127.0.0.1:8000";
const want = (process.env.AI_LB_MODELS ?? "").split(",").filter(Boolean).sort();
const embedModel = process.env.AI_LB_EMBED_MODEL ?? "";
const client = new Ollama({ host });

function fail(msg) {
  console.error(`ollama_client: ${msg}`);
  process.exit(1);
}
function check(ok, msg) {
  if (!ok) fail(msg);
}
// node names the simulated node that wrote a text ("<id>-tok0 <id>-tok1 ...").
function node(text) {
  const m = /^(.+?)-(tok|think)\d* /.exec(text);
  check(m, `text ${JSON.stringify(text)} is not a simulated node's`);
  const id = m[1];
  check(text.split(" ").filter(Boolean).every((t) => t.startsWith(`${id}-`)), `text ${JSON.stringify(text)} mixes nodes`);
  return id;
}

// list: the union of the nodes' models, each once, on every call.
const lists = await Promise.all(Array.from({ length: 12 }, () => client.list()));
for (const list of lists) {
  const names = list.models.map((m) => m.name).sort();
  check(JSON.stringify(names) === JSON.stringify(want), `list ${JSON.stringify(names)}, want ${JSON.stringify(want)}`);
  for (const m of list.models) {
    check(m.model === m.name && /^[0-9a-f]{64}$/.test(m.digest), `list entry ${JSON.stringify(m)}`);
  }
}
const ps = await client.ps();
check(ps.models.length === want.length, `ps ${JSON.stringify(ps)}`);
const version = await client.version();
check(/^\d+\.\d+\.\d+$/.test(version.version), `version ${JSON.stringify(version)}`);

// show: every model, routed to a node that serves it.
const chatModels = [];
for (const name of want) {
  const show = await client.show({ model: name });
  const ctx = Object.entries(show.model_info ?? {}).find(([k]) => k.endsWith(".context_length"));
  check(ctx && ctx[1] > 0, `show ${name}: no context length in ${JSON.stringify(show.model_info)}`);
  check(Array.isArray(show.capabilities), `show ${name}: no capabilities`);
  if (show.capabilities.includes("completion")) chatModels.push(name);
}
check(chatModels.length > 0, "no chat model");

const tools = [
  {
    type: "function",
    function: {
      name: "list_dir",
      description: "Lists a directory.",
      parameters: { type: "object", properties: { path: { type: "string" } }, required: ["path"] },
    },
  },
];

// chat streams one turn and returns its text, thinking, tool calls, final
// record and the number of records.
async function chat(model, messages, extra = {}) {
  const stream = await client.chat({ model, messages, tools, stream: true, ...extra });
  const out = { content: "", thinking: "", toolCalls: [], final: null, records: 0 };
  for await (const part of stream) {
    out.records++;
    check(!out.final, `${model}: a record after the final one`);
    out.content += part.message.content ?? "";
    out.thinking += part.message.thinking ?? "";
    out.toolCalls.push(...(part.message.tool_calls ?? []));
    if (part.done) out.final = part;
  }
  check(out.final, `${model}: no final record`);
  return out;
}

const chats = {};
for (const model of chatModels) {
  // Without the tag where it is :latest: ai-lb matches it.
  const asked = model.endsWith(":latest") ? model.slice(0, -":latest".length) : model;
  const messages = [{ role: "user", content: "List my files." }];
  const first = await chat(asked, messages, { think: "medium", options: { temperature: 0.7, num_predict: 512 } });
  check(first.toolCalls.length === 1 && first.toolCalls[0].function.name === "list_dir",
    `${model}: tool calls ${JSON.stringify(first.toolCalls)}`);
  check(typeof first.toolCalls[0].function.arguments === "object", `${model}: arguments not an object`);
  const nodes = [node(first.thinking)];
  messages.push({ role: "assistant", content: "", tool_calls: first.toolCalls });
  messages.push({ role: "tool", content: '{"files":[]}', tool_name: "list_dir" });
  const second = await chat(asked, messages);
  check(second.content !== "" && second.final.done_reason === "stop" && second.final.eval_count > 0,
    `${model}: follow-up ${JSON.stringify(second)}`);
  nodes.push(node(second.content));
  chats[model] = nodes;
}

// embed
if (embedModel) {
  const out = await client.embed({ model: embedModel, input: ["alpha", "beta"] });
  check(out.embeddings.length === 2 && out.embeddings[0].length > 0, `embed ${JSON.stringify(out)}`);
}

// errors: an unknown model, and a pull, which ai-lb refuses.
try {
  await client.chat({ model: "no-such-model", messages: [{ role: "user", content: "hi" }], stream: true });
  fail("a chat with an unknown model succeeded");
} catch (e) {
  check(e.status_code === 404 && e.error === 'model "no-such-model:latest" not found', `unknown model: ${e.status_code} ${e.message}`);
}
try {
  await client.pull({ model: chatModels[0] });
  fail("a pull succeeded");
} catch (e) {
  check(e.status_code === 403 && e.error.includes("does not pull models"), `pull: ${e.status_code} ${e.message}`);
}

console.log(JSON.stringify({ ok: true, models: want, chats }));
