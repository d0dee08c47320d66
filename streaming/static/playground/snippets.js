// The current request as code to run outside the browser: the whole comparison (POST /v1/compare), or one model's
// part of it as an ordinary chat completion. The server never holds a key's plaintext, so the snippets read it
// from GATEWAY_API_KEY and name the key by its prefix.

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function keyComment(key) {
  return `# Key "${key.name}" (${key.prefix}..., tier ${key.tier}): export GATEWAY_API_KEY=<the full key>`;
}

function sameMessages(request) {
  const [first, ...rest] = request.models.map((model) => JSON.stringify(request.messagesByModel[model]));
  return rest.every((other) => other === first);
}

/** The parameters every model gets, as request fields. */
function sharedFields(request) {
  const fields = {};
  if (request.temperature != null) fields.temperature = request.temperature;
  if (request.maxTokens != null) fields.max_tokens = request.maxTokens;
  Object.assign(fields, request.params || {});
  if (request.tools && request.tools.length) fields.tools = request.tools;
  return fields;
}

function ownFields(request, model) {
  return (request.paramsByModel || {})[model] || {};
}

/** A JSON value as a Python literal (True, False, None), indented by four spaces a level. */
function pythonLiteral(value, indent = "") {
  const inner = `${indent}    `;
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => `${inner}${pythonLiteral(item, inner)}`).join(",\n")},\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(v, inner)}`).join(",\n")},\n${indent}}`;
}

function pythonKeywords(fields, indent) {
  return Object.entries(fields).map(([name, value]) => `${indent}${name}=${pythonLiteral(value, indent)},`);
}

const PYTHON_HEAD = (apiBase, key) => [
  keyComment(key),
  "import os",
  "",
  "from openai import OpenAI",
  "",
  `client = OpenAI(base_url=${JSON.stringify(apiBase)}, api_key=os.environ["GATEWAY_API_KEY"])`,
  "",
];

// Prints the answer as it streams, and any tool call the model makes.
const PYTHON_PRINT = [
  "for chunk in stream:",
  "    if not chunk.choices:",
  "        continue",
  "    delta = chunk.choices[0].delta",
  "    if delta.content:",
  `        print(delta.content, end="", flush=True)`,
  "    for call in delta.tool_calls or []:",
  `        print(call.function.name or "", call.function.arguments or "", sep="", end="", flush=True)`,
  "print()",
];

/**
 * @param {{models: string[], messagesByModel: Object<string, object[]>, temperature?: number, maxTokens?: number,
 *          params?: object, tools?: object[], paramsByModel?: Object<string, object>}} request
 * @param {?string} model  one model's request only, as a chat completion
 */
export function curlSnippet({ apiBase, key, request, model = null }) {
  let url;
  let body;
  if (model) {
    url = `${apiBase}/chat/completions`;
    body = { model, messages: request.messagesByModel[model] || [], ...sharedFields(request), ...ownFields(request, model), stream: true };
  } else {
    url = `${apiBase}/compare`;
    // One shared conversation reads best; once the models' answers differ, each continues its own.
    body = { models: request.models };
    if (sameMessages(request)) body.messages = request.messagesByModel[request.models[0]] || [];
    else body.messages_by_model = Object.fromEntries(request.models.map((m) => [m, request.messagesByModel[m]]));
    Object.assign(body, sharedFields(request));
    const own = Object.fromEntries(request.models.map((m) => [m, ownFields(request, m)]).filter(([, v]) => Object.keys(v).length));
    if (Object.keys(own).length) body.params_by_model = own;
  }
  return [
    keyComment(key),
    `curl -N ${url} \\`,
    `  -H "Authorization: Bearer $GATEWAY_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join("\n") + "\n";
}

export function pythonSnippet({ apiBase, key, request, model = null }) {
  const lines = PYTHON_HEAD(apiBase, key);
  const shared = sharedFields(request);

  if (model) {
    lines.push(`messages = ${pythonLiteral(request.messagesByModel[model] || [])}`, "");
    lines.push(
      "stream = client.chat.completions.create(",
      `    model=${JSON.stringify(model)},`,
      "    messages=messages,",
      ...pythonKeywords({ ...shared, ...ownFields(request, model) }, "    "),
      "    stream=True,",
      ")",
      ...PYTHON_PRINT,
    );
    return lines.join("\n") + "\n";
  }

  let loopHead;
  if (sameMessages(request)) {
    lines.push(`messages = ${pythonLiteral(request.messagesByModel[request.models[0]] || [])}`, "");
    lines.push(`models = ${pythonLiteral(request.models)}`, "");
    loopHead = "for model in models:";
  } else {
    // Each model answered differently before, so each continues its own conversation.
    const byModel = Object.fromEntries(request.models.map((m) => [m, request.messagesByModel[m]]));
    lines.push(`messages_by_model = ${pythonLiteral(byModel)}`, "");
    loopHead = "for model, messages in messages_by_model.items():";
  }
  const own = Object.fromEntries(request.models.map((m) => [m, ownFields(request, m)]).filter(([, v]) => Object.keys(v).length));
  const perModel = Object.keys(own).length > 0;
  if (perModel) {
    lines.push(`options = ${pythonLiteral(shared)}`, "");
    lines.push("# Each model's own parameters, over the shared ones.", `params_by_model = ${pythonLiteral(own)}`, "");
  }
  lines.push(
    loopHead,
    `    print(f"--- {model}")`,
    "    stream = client.chat.completions.create(",
    "        model=model,",
    "        messages=messages,",
    ...(perModel ? ["        **{**options, **params_by_model.get(model, {})},"] : pythonKeywords(shared, "        ")),
    "        stream=True,",
    "    )",
    ...PYTHON_PRINT.map((line) => `    ${line}`),
  );
  return lines.join("\n") + "\n";
}
