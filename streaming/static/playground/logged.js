// A request from the request log, opened in the playground (/playground/?log=<request id>, linked from the
// log's admin page): staff only, and only what the log kept (redacted text). The admin answers with the
// conversation as OpenAI-style text messages, user and assistant in turn, plus its system prompt, model and
// settings.

const CONVERSATION_URL = "/admin/accounts/requestlog/conversation/";

/** The logged conversation, or an Error whose message says why it cannot be opened. */
export async function fetchLogged(requestId) {
  let response;
  try {
    response = await fetch(`${CONVERSATION_URL}${encodeURIComponent(requestId)}.json`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
  } catch {
    throw new Error("The logged request could not be loaded: the gateway did not answer.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok || !body || !Array.isArray(body.messages)) {
    const message = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
    throw new Error(message || `The logged request could not be loaded (HTTP ${response.status}).`);
  }
  return body;
}

/**
 * The messages as the playground's turns: each user message with the assistant answer after it. A trailing
 * user message without an answer is `pending`: it goes back into the prompt box, ready to send.
 */
export function loggedTurns(messages) {
  const turns = [];
  let prompt = null;
  for (const message of messages) {
    const text = typeof message.content === "string" ? message.content : "";
    if (message.role === "assistant") {
      turns.push({ prompt: prompt ?? "", answer: text });
      prompt = null;
    } else {
      prompt = prompt == null ? text : `${prompt}\n\n${text}`;
    }
  }
  return { turns, pending: prompt };
}
