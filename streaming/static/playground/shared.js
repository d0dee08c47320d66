// The read-only page of a shared run (/playground/shared/<token>/): each turn's prompt and every model's answer
// side by side, drawn from the JSON the server put in the page. Model output goes through the Markdown
// sanitizer, everything else in as text. An arena turn shows "Model A" and "Model B" until it was voted on.

import { renderMarkdown } from "./markdown.js";
import { formatCost, formatMs, formatTokens } from "./format.js";

const run = JSON.parse(document.getElementById("shared-run-data").textContent);
const list = document.getElementById("shared-turns");
const VOTES = { a: "Model A was voted better", b: "Model B was voted better", tie: "Voted a tie", bad: "Voted: both bad" };
const ENDED = {
  cancelled: "Stopped before it finished.",
  interrupted: "Cut short: nobody followed the run to its end.",
  running: "Still running when this page was opened.",
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function stats(done) {
  const parts = [];
  const usage = done.usage || {};
  if (usage.prompt_tokens != null || usage.completion_tokens != null) {
    parts.push(`${formatTokens(usage.prompt_tokens)} in / ${formatTokens(usage.completion_tokens)} out`);
  }
  if (done.ttft_ms != null) parts.push(`first token ${formatMs(done.ttft_ms)}`);
  if (done.duration_ms != null) parts.push(`total ${formatMs(done.duration_ms)}`);
  if (done.cost != null) parts.push(formatCost(done.cost));
  return parts.join(" · ");
}

/** One model's answer: its name (an arena side's label until the turn's vote), the text, and its stats. */
function answerCard(name, detail, answer) {
  const card = element("section", "shared-answer");
  card.dataset.testid = "shared-answer";
  card.dataset.model = name;
  const head = element("header", "shared-answer-head");
  head.append(element("h2", "shared-answer-name", name));
  if (detail) head.append(element("span", "shared-answer-detail", detail));
  const body = element("div", "shared-answer-body");
  if (typeof answer.reasoning === "string" && answer.reasoning) {
    const reasoning = element("details", "reasoning");
    reasoning.append(element("summary", "reasoning-summary", "Thinking"), element("div", "reasoning-body", answer.reasoning));
    body.append(reasoning);
  }
  const text = element("div", "answer markdown");
  text.dataset.testid = "shared-answer-text";
  text.append(renderMarkdown(typeof answer.text === "string" ? answer.text : ""));
  body.append(text);
  if (answer.status === "error") {
    const error = answer.error || {};
    const detailText = [error.code, error.status ? `HTTP ${error.status}` : null].filter(Boolean).join(" · ");
    body.append(element("p", "shared-answer-note shared-answer-error", `${error.message || "The model could not answer."}${detailText ? ` (${detailText})` : ""}`));
  } else if (ENDED[answer.status]) {
    body.append(element("p", "shared-answer-note", ENDED[answer.status]));
  }
  if (answer.truncated) body.append(element("p", "shared-answer-note", "Cut to fit the saved size."));
  card.append(head, body);
  if (answer.status === "done" && answer.done) {
    const line = stats(answer.done);
    if (line) card.append(element("footer", "shared-answer-stats", line));
  }
  return card;
}

function turnItem(turn, index) {
  const item = element("li", "shared-turn");
  item.dataset.testid = "shared-turn";
  const head = element("div", "shared-turn-head");
  head.append(element("span", null, `Turn ${index + 1}`));
  item.append(head);
  if (typeof turn.system === "string" && turn.system && index === 0) {
    item.append(element("p", "shared-system", `System: ${turn.system}`));
  }
  const prompt = element("div", "shared-prompt");
  prompt.append(element("p", "bubble", turn.prompt || ""));
  item.append(prompt);
  const answers = element("div", "shared-answers");
  const arena = turn.arena;
  if (arena) {
    const reveal = arena.reveal;
    item.append(element("p", "shared-vote", arena.vote ? VOTES[arena.vote] || "Voted" : "Not voted on: the models stay hidden."));
    for (const side of ["a", "b"]) {
      const label = run.labels[side];
      const shown = reveal && reveal[side];
      const detail = shown ? [label, shown.provider ? `via ${shown.provider}` : null, shown.cost != null ? formatCost(Number(shown.cost)) : null].filter(Boolean).join(" · ") : null;
      answers.append(answerCard(shown ? shown.model : label, detail, (turn.answers || {})[side] || {}));
    }
  } else {
    for (const name of turn.models || []) {
      const answer = (turn.answers || {})[name] || {};
      answers.append(answerCard(name, answer.done && answer.done.provider ? `via ${answer.done.provider}` : null, answer));
    }
  }
  item.append(answers);
  return item;
}

list.replaceChildren(...(run.turns || []).map(turnItem));
