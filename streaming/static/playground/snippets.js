// The current request as code to run outside the browser. The server never holds a key's
// plaintext, so the snippets read it from GATEWAY_API_KEY and name the key by its prefix.

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

/**
 * @param {{models: string[], messagesByModel: Object<string, object[]>, temperature?: number,
 *          maxTokens?: number}} request
 */
export function curlSnippet({ apiBase, key, request }) {
  // One shared conversation reads best; once the models' answers differ, each continues its own.
  const body = { models: request.models };
  if (sameMessages(request)) body.messages = request.messagesByModel[request.models[0]] || [];
  else body.messages_by_model = Object.fromEntries(request.models.map((m) => [m, request.messagesByModel[m]]));
  if (request.temperature != null) body.temperature = request.temperature;
  if (request.maxTokens != null) body.max_tokens = request.maxTokens;
  return [
    keyComment(key),
    `curl -N ${apiBase}/compare \\`,
    `  -H "Authorization: Bearer $GATEWAY_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join("\n") + "\n";
}

// JSON of strings and numbers reads the same as a Python literal, except for these three names.
function pythonLiteral(value, indent) {
  return JSON.stringify(value, null, 4)
    .replace(/\n/g, `\n${indent}`)
    .replace(/: (true|false|null)([,\n]|$)/g, (_, name, end) => {
      const python = { true: "True", false: "False", null: "None" }[name];
      return `: ${python}${end}`;
    });
}

export function pythonSnippet({ apiBase, key, request }) {
  const options = [];
  if (request.temperature != null) options.push(`temperature=${request.temperature}`);
  if (request.maxTokens != null) options.push(`max_tokens=${request.maxTokens}`);
  const extra = options.length ? `, ${options.join(", ")}` : "";
  const lines = [
    keyComment(key),
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(apiBase)}, api_key=os.environ["GATEWAY_API_KEY"])`,
    "",
  ];

  let loopHead;
  let messagesName;
  if (sameMessages(request)) {
    const messages = request.messagesByModel[request.models[0]] || [];
    lines.push(`messages = ${pythonLiteral(messages, "")}`, "");
    lines.push(`models = ${pythonLiteral(request.models, "")}`, "");
    loopHead = "for model in models:";
    messagesName = "messages";
  } else {
    // Each model answered differently before, so each continues its own conversation.
    const byModel = Object.fromEntries(request.models.map((model) => [model, request.messagesByModel[model]]));
    lines.push(`messages_by_model = ${pythonLiteral(byModel, "")}`, "");
    loopHead = "for model, messages in messages_by_model.items():";
    messagesName = "messages";
  }

  lines.push(
    loopHead,
    `    print(f"--- {model}")`,
    "    stream = client.chat.completions.create(",
    `        model=model, messages=${messagesName}, stream=True${extra}`,
    "    )",
    "    for chunk in stream:",
    "        if chunk.choices and chunk.choices[0].delta.content:",
    `            print(chunk.choices[0].delta.content, end="", flush=True)`,
    "    print()",
  );
  return lines.join("\n") + "\n";
}
