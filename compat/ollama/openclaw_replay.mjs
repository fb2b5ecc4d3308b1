// Replays the calls of OpenClaw's Ollama provider (`api: "ollama"`, as of
// OpenClaw 2026.9) against ai-lb, in its order and with its limits:
//
//   1. discovery: GET {base}/api/tags (5 s), then POST {base}/api/show
//      {"model"} for each model, 8 at a time, 3 s each; it reads
//      model_info.*.context_length, "num_ctx N" in parameters and the
//      capabilities, and drops embedding-only models;
//   2. chat: POST {base}/api/chat with Authorization: Bearer ollama-local,
//      stream, tools sorted by name, options (temperature, num_ctx capped at
//      32768, num_predict), truncate/shift false, keep_alive and think; the
//      NDJSON stream read as OpenClaw reads it (every record an object with
//      a message and a boolean done, an error record is an error, done:true
//      is final, nothing after it, EOF before it is a server error); a
//      tool call is answered with a role "tool" message;
//   3. memory: POST {base}/api/embed {"model","input"}.
//
// The base URL is OpenClaw's: trailing "/" and one trailing "/v1" dropped.
// Prints {"ok":true,"calls":[...],"catalog":{...},"chats":{...}}.
//
//   AI_LB_URL=http://127.0.0.1:8000/v1 AI_LB_EMBED_MODEL=nomic-embed-text node openclaw_replay.mjs
const baseUrl = process.env.AI_LB_URL ?? "http://127.0.0.1:11434";
const embedModel = process.env.AI_LB_EMBED_MODEL ?? "";
const base = baseUrl.replace(/\/+$/, "").replace(/\/v1$/, "");
const headers = { "Content-Type": "application/json", Authorization: "Bearer ollama-local" };
const calls = [];

function fail(msg) {
  console.error(`openclaw_replay: ${msg}`);
  process.exit(1);
}

async function call(method, path, body, timeoutMs) {
  calls.push(`${method} ${path}${body?.model ? ` ${body.model}` : ""}`);
  const init = { method, headers, signal: timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(`${base}${path}`, init);
  if (!resp.ok) fail(`${method} ${path}: ${resp.status} ${await resp.text()}`);
  return resp;
}

// 1. Discovery.
const tags = await (await call("GET", "/api/tags", undefined, 5000)).json();
const names = tags.models.map((m) => m.name);
if (names.length === 0) fail("no models");
const catalog = {};
for (let i = 0; i < names.length; i += 8) {
  await Promise.all(names.slice(i, i + 8).map(async (name) => {
    const show = await (await call("POST", "/api/show", { model: name }, 3000)).json();
    const caps = show.capabilities ?? [];
    if (caps.includes("embedding") && !caps.includes("completion")) return; // embedding-only
    const window = Object.entries(show.model_info ?? {}).find(([k]) => k.endsWith(".context_length"))?.[1];
    const numCtx = Number(/(?:^|\n)num_ctx\s+(\d+)/.exec(show.parameters ?? "")?.[1] ?? 0);
    if (!(window > 0)) fail(`show ${name}: no context length`);
    catalog[name] = { contextWindow: window, numCtx, contextTokens: Math.min(32768, window), reasoning: caps.includes("thinking"),
      tools: caps.includes("tools") };
  }));
}

// 2. Chat, as OpenClaw's stream reader takes it.
async function turn(model, messages, tools) {
  const body = {
    model,
    messages,
    stream: true,
    tools,
    options: { temperature: 0.7, num_ctx: catalog[model].contextTokens, num_predict: 512 },
    truncate: false,
    shift: false,
    keep_alive: "15m",
    think: catalog[model].reasoning ? "medium" : false,
  };
  const resp = await call("POST", "/api/chat", body);
  const out = { content: "", thinking: "", toolCalls: [], final: null };
  let buf = "";
  const decoder = new TextDecoder();
  const take = (line) => {
    if (line.trim() === "") return;
    if (line.length > 16 << 20) fail("a record over 16 MiB");
    const rec = JSON.parse(line);
    if (rec.error) fail(`${model}: error record ${rec.error}`);
    if (out.final) fail(`${model}: a record after done:true`);
    if (typeof rec.message !== "object" || typeof rec.done !== "boolean") fail(`${model}: record ${line}`);
    out.content += rec.message.content ?? "";
    out.thinking += rec.message.thinking ?? "";
    out.toolCalls.push(...(rec.message.tool_calls ?? []));
    if (rec.done) out.final = rec;
  };
  for await (const chunk of resp.body) {
    buf += decoder.decode(chunk, { stream: true });
    const lines = buf.split("\n");
    buf = lines.pop();
    lines.forEach(take);
  }
  take(buf + decoder.decode());
  if (!out.final) fail(`${model}: Ollama API stream ended without a final response`);
  if (!(out.final.prompt_eval_count > 0 && out.final.eval_count > 0)) fail(`${model}: no usage in ${JSON.stringify(out.final)}`);
  return out;
}

const toolNames = ["web_search", "read_file", "list_dir", "run_shell"];
const tools = toolNames.sort().map((name) => ({
  type: "function",
  function: { name, description: `OpenClaw tool ${name}`, parameters: { type: "object", properties: { target: { type: "string" } } } },
}));
const chats = {};
for (const model of Object.keys(catalog).sort()) {
  const messages = [
    { role: "system", content: "You are OpenClaw, a personal agent." },
    { role: "user", content: "hi, list my files" },
  ];
  const first = await turn(model, messages, tools);
  if (first.toolCalls.length !== 1) fail(`${model}: tool calls ${JSON.stringify(first.toolCalls)}`);
  const tc = first.toolCalls[0];
  messages.push({ role: "assistant", content: first.content, tool_calls: first.toolCalls });
  messages.push({ role: "tool", content: "[]", tool_name: tc.function.name, tool_call_id: tc.id });
  const second = await turn(model, messages, tools);
  if (second.content === "" || second.toolCalls.length !== 0) fail(`${model}: follow-up ${JSON.stringify(second)}`);
  chats[model] = { tool: tc.function.name, text: second.content, thinking: first.thinking, doneReason: second.final.done_reason };
}

// 3. Memory.
if (embedModel) {
  const out = await (await call("POST", "/api/embed", { model: embedModel, input: ["remember this"] })).json();
  if (!(out.embeddings?.length === 1)) fail(`embed: ${JSON.stringify(out)}`);
}

console.log(JSON.stringify({ ok: true, calls, catalog, chats }));
