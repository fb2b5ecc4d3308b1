// Sends OpenClaw-shaped chat traffic through ai-lb with the official openai
// npm client and checks that it arrives intact. OpenClaw always streams
// (with stream_options.include_usage), sends 20-60 KB bodies with a long
// system prompt, a dozen tools with tool_choice "auto",
// max_completion_tokens, array-of-parts message content, and follow-up
// turns carrying tool_calls and role "tool" messages.
//
//   AI_LB_URL=http://127.0.0.1:8000 node openclaw_traffic.mjs [conversations]
import OpenAI from "openai";

const base = process.env.AI_LB_URL ?? "http://127.0.0.1:8000";
const model = process.env.AI_LB_MODEL ?? "sim-model";
const conversations = Number(process.argv[2] ?? 3);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });

const toolNames = ["read_file", "write_file", "list_dir", "run_shell", "web_search", "web_fetch",
  "send_message", "schedule_task", "memory_search", "memory_write", "browser_open", "calendar_list"];
const tools = toolNames.map((name) => ({
  type: "function",
  function: {
    name,
    description: `OpenClaw tool ${name}: ${"does one careful thing. ".repeat(8)}`,
    parameters: {
      type: "object",
      properties: {
        target: { type: "string", description: "what to act on" },
        options: { type: "object", additionalProperties: true },
        limit: { type: "integer", minimum: 1, maximum: 100 },
      },
      required: ["target"],
    },
  },
}));
const system = "You are OpenClaw, a personal agent. Follow the operator's policies. ".repeat(450);

function fail(msg) {
  console.error(`openclaw_traffic: ${msg}`);
  process.exit(1);
}

async function turn(messages) {
  const params = {
    model,
    stream: true,
    stream_options: { include_usage: true },
    messages,
    tools,
    tool_choice: "auto",
    max_completion_tokens: 512,
  };
  const size = JSON.stringify(params).length;
  if (size < 20_000 || size > 60_000) fail(`request body is ${size} bytes, not 20-60 KB`);
  const stream = await client.chat.completions.create(params);
  const out = { content: "", toolCalls: [], usage: null, finish: null, chunks: 0, ids: new Set() };
  for await (const chunk of stream) {
    out.chunks++;
    out.ids.add(chunk.id);
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta?.content) out.content += choice.delta.content;
      for (const tc of choice.delta?.tool_calls ?? []) {
        const call = (out.toolCalls[tc.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } });
        if (tc.id) call.id = tc.id;
        if (tc.function?.name) call.function.name += tc.function.name;
        if (tc.function?.arguments) call.function.arguments += tc.function.arguments;
      }
      if (choice.finish_reason) out.finish = choice.finish_reason;
    }
  }
  if (out.ids.size !== 1) fail(`chunks carry ${out.ids.size} completion ids: a stream was mixed`);
  if (!out.usage || !(out.usage.completion_tokens > 0)) fail(`no usage chunk: ${JSON.stringify(out.usage)}`);
  return out;
}

async function conversation(i) {
  const messages = [
    { role: "system", content: system },
    { role: "user", content: [{ type: "text", text: `Conversation ${i}: list my files, then summarise.` }] },
  ];
  const first = await turn(messages);
  if (first.finish !== "tool_calls") fail(`turn 1 finished with ${first.finish}, want tool_calls`);
  if (first.toolCalls.length !== 1) fail(`turn 1 has ${first.toolCalls.length} tool calls`);
  const call = first.toolCalls[0];
  if (!toolNames.includes(call.function.name)) fail(`unknown tool ${call.function.name}`);
  JSON.parse(call.function.arguments); // must be whole JSON

  messages.push({ role: "assistant", content: null, tool_calls: [call] });
  messages.push({ role: "tool", tool_call_id: call.id, content: "file-a.txt\nfile-b.txt" });
  const second = await turn(messages);
  if (second.finish !== "stop") fail(`turn 2 finished with ${second.finish}, want stop`);
  const nodes = new Set([...second.content.matchAll(/(\S+)-tok\d+/g)].map((m) => m[1]));
  if (second.content === "" || nodes.size !== 1) fail(`turn 2 text is not one node's: ${second.content}`);
  return { tool: call.function.name, chunks: first.chunks + second.chunks, usage: second.usage };
}

const results = await Promise.all(Array.from({ length: conversations }, (_, i) => conversation(i)));
console.log(JSON.stringify({ ok: true, conversations: results.length, results }));
