// One model's column: its conversation (one article per turn), the answer streaming in, and live
// stats. A column keeps its own history because models answer differently, so each one's next
// turn must build on its own previous answers.

import { renderMarkdown } from "./markdown.js";
import { formatCost, formatModelPrice, formatMs, formatRate, formatTokens } from "./format.js";

const BADGES = {
  idle: "",
  waiting: "Waiting",
  streaming: "Streaming",
  done: "Done",
  error: "Error",
  cancelled: "Stopped",
};

// A render that takes this long makes the next few frames skip, so a long answer cannot starve
// the other columns or the input.
const SLOW_RENDER_MS = 12;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function estimateTokens(text, chunks) {
  return Math.max(chunks, Math.round(text.length / 4));
}

/** One exchange in a column: the user's prompt and this model's answer. */
class Turn {
  constructor() {
    this.prompt = "";
    this.answer = "";
    this.cached = false;
    this.reasoning = "";
    this.state = "idle";
    this.reasoningTouched = false;
    this.reasoningStartedAt = null;
    this.answerStartedAt = null;

    this.node = element("article", "turn");
    this.userNode = element("div", "turn-user");
    this.bubble = element("p", "bubble");
    this.userNode.append(this.bubble);

    this.reasoningNode = element("details", "reasoning");
    this.reasoningNode.hidden = true;
    this.reasoningSummary = element("summary", "reasoning-summary", "Thinking");
    this.reasoningBody = element("div", "reasoning-body");
    this.reasoningNode.append(this.reasoningSummary, this.reasoningBody);
    // Opened while the model thinks, folded when the answer starts, unless the user chose.
    this.reasoningExpected = false;
    this.reasoningNode.addEventListener("toggle", () => {
      if (this.reasoningNode.open !== this.reasoningExpected) this.reasoningTouched = true;
    });

    this.answerNode = element("div", "answer markdown");
    this.errorNode = element("div", "column-error");
    this.errorNode.hidden = true;
    this.errorNode.setAttribute("role", "alert");
    this.noteNode = element("p", "turn-note");
    this.noteNode.hidden = true;

    this.node.append(this.userNode, this.reasoningNode, this.answerNode, this.errorNode, this.noteNode);
  }

  /** The newest turn carries the data-testids, so there is exactly one of each per column. */
  setCurrent(current) {
    const marks = [
      [this.reasoningNode, "column-reasoning"],
      [this.answerNode, "column-output"],
      [this.errorNode, "column-error"],
    ];
    for (const [node, testid] of marks) {
      if (current) node.dataset.testid = testid;
      else delete node.dataset.testid;
    }
  }

  setReasoningOpen(open) {
    if (this.reasoningTouched || this.reasoningNode.open === open) return;
    this.reasoningExpected = open;
    this.reasoningNode.open = open;
  }
}

export class ModelColumn {
  /**
   * @param {{name: string, input_price_per_million: ?number, output_price_per_million: ?number}} model
   * @param {{onRemove: (name: string) => void}} handlers
   */
  constructor(model, { onRemove }) {
    this.model = model.name;
    this.history = [];
    this.turns = [];
    this.frame = null;
    this.skipUntil = 0;
    this.answerDirty = false;
    this.reasoningDirty = false;
    this.build(model, onRemove);
    this.current = this.addTurn();
    this.current.node.hidden = true;
    this.setState("idle");
    this.resetStats();
  }

  build(model, onRemove) {
    const root = element("section", "column");
    root.dataset.testid = "column";
    root.dataset.model = model.name;
    root.setAttribute("aria-label", `${model.name} conversation`);

    const head = element("header", "column-head");
    const titles = element("div", "column-titles");
    const title = element("h2", "column-title", model.name);
    title.title = model.name;
    const price = element("span", "column-price", formatModelPrice(model));
    price.title = formatModelPrice(model);
    titles.append(title, price);
    this.badge = element("span", "column-badge");
    this.badge.hidden = true;
    // The current turn was answered from the gateway's response cache: no provider was called.
    this.cachedBadge = element("span", "column-cached", "cached");
    this.cachedBadge.dataset.testid = "cached-badge";
    this.cachedBadge.title = "Answered from the response cache: no provider was called, nothing was charged";
    this.cachedBadge.hidden = true;
    this.removeButton = element("button", "icon-button column-remove");
    this.removeButton.type = "button";
    this.removeButton.setAttribute("aria-label", `Remove ${model.name} from the comparison`);
    this.removeButton.title = "Remove from the comparison";
    this.removeButton.addEventListener("click", () => onRemove(this.model));
    head.append(titles, this.cachedBadge, this.badge, this.removeButton);

    this.body = element("div", "column-body");
    this.body.tabIndex = 0;
    // New text keeps the column scrolled to the end until the user scrolls up to read.
    this.following = true;
    this.autoScrollTop = null;
    this.body.addEventListener("scroll", () => {
      // Our own scrolling lands here too, after the layout may have grown again: skip it.
      if (this.autoScrollTop != null && Math.abs(this.body.scrollTop - this.autoScrollTop) < 2) return;
      this.following = this.isAtEnd();
    }, { passive: true });
    this.body.setAttribute("aria-label", `${model.name} messages`);
    this.emptyNote = element("p", "column-empty", "Answers from this model appear here.");
    this.transcript = element("div", "transcript");
    this.body.append(this.emptyNote, this.transcript);

    const stats = element("footer", "column-stats");
    stats.dataset.testid = "column-stats";
    stats.setAttribute("aria-label", `${model.name} statistics`);
    const grid = element("dl", "stats-grid");
    this.stat = {};
    for (const [key, label, hint] of [
      ["ttft", "First token", "Time from sending to the first token"],
      ["speed", "Speed", "Output tokens per second after the first token"],
      ["tokens", "Tokens", "Prompt tokens in, completion tokens out"],
      ["cost", "Cost", "Cost of this turn"],
    ]) {
      const cell = element("div", "stat");
      cell.title = hint;
      const dt = element("dt", "stat-label", label);
      const dd = element("dd", "stat-value", "—");
      cell.append(dt, dd);
      grid.append(cell);
      this.stat[key] = dd;
    }
    this.meta = element("p", "stats-meta");
    stats.append(grid, this.meta);

    root.append(head, this.body, stats);
    this.element = root;
  }

  addTurn() {
    const turn = new Turn();
    this.turns.push(turn);
    this.transcript.append(turn.node);
    for (const other of this.turns) other.setCurrent(other === turn);
    return turn;
  }

  setState(state) {
    this.state = state;
    this.element.dataset.state = state === "waiting" ? "streaming" : state;
    this.badge.textContent = BADGES[state];
    this.badge.hidden = !BADGES[state];
    this.badge.dataset.state = state;
  }

  get running() {
    return this.state === "waiting" || this.state === "streaming";
  }

  setRemovable(removable) {
    this.removeButton.disabled = !removable;
  }

  /** The messages for this model's next turn: system prompt, its own history, the new prompt. */
  messagesFor(prompt, system) {
    const messages = [];
    if (system) messages.push({ role: "system", content: system });
    messages.push(...this.history);
    if (prompt != null) messages.push({ role: "user", content: prompt });
    return messages;
  }

  beginTurn(prompt, sentAt) {
    const placeholder = this.current.node.hidden && this.current.state === "idle";
    const turn = placeholder ? this.current : this.addTurn();
    turn.node.hidden = false;
    turn.prompt = prompt;
    turn.bubble.textContent = prompt;
    turn.state = "waiting";
    this.previous = placeholder ? null : this.current;
    this.current = turn;
    this.sentAt = sentAt;
    this.firstTokenAt = null;
    this.chunks = 0;
    this.server = null;
    turn.server = null;
    this.requestId = null;
    this.setCached(turn, false);
    this.emptyNote.hidden = true;
    this.setState("waiting");
    this.resetStats();
    this.stat.ttft.textContent = "…";
    this.following = true;
    this.followEnd();
  }

  /** A turn that ran elsewhere (a request from the request log): shown and kept in the history, no stats. */
  replayTurn(prompt, answer) {
    this.beginTurn(prompt, performance.now());
    this.current.answer = answer;
    this.finish({});
  }

  /**
   * A turn of a saved run, as the server kept it: the prompt, this model's answer (and reasoning), and its
   * stats or its error. Answers that finished rejoin the column's history, so the run can be continued.
   * @param {string} prompt
   * @param {{status: string, text?: string, reasoning?: string, done?: object, error?: object}} saved
   */
  restoreTurn(prompt, saved) {
    this.beginTurn(prompt, performance.now());
    const turn = this.current;
    turn.answer = typeof saved.text === "string" ? saved.text : "";
    if (typeof saved.reasoning === "string" && saved.reasoning) {
      turn.reasoning = saved.reasoning;
      turn.reasoningNode.hidden = false;
      this.reasoningDirty = true;
    }
    if (saved.status === "done") {
      this.finish(saved.done || {});
    } else if (saved.status === "error") {
      this.fail(saved.error || {});
    } else if (saved.status === "interrupted") {
      this.fail({ code: "interrupted", message: "This answer was cut short: nobody followed the run to its end in time, or the gateway restarted." });
    } else {
      this.fail({ code: "cancelled", status: 499 });
    }
  }

  /** Undo a turn the server refused as a whole, before any model started on it. */
  rollbackTurn() {
    const turn = this.current;
    this.resetStats();
    if (this.previous) {
      turn.node.remove();
      this.turns.pop();
      this.current = this.previous;
      this.current.setCurrent(true);
      this.server = this.current.server || null;
      this.setCached(this.current, this.current.cached);
      this.setState(this.current.state);
      this.renderStats();
      this.renderMeta();
    } else {
      turn.prompt = "";
      turn.state = "idle";
      turn.bubble.textContent = "";
      turn.node.hidden = true;
      this.emptyNote.hidden = this.turns.length > 1;
      this.server = null;
      this.setCached(turn, false);
      this.setState("idle");
    }
    this.previous = null;
  }

  start(frame) {
    this.requestId = frame.request_id || null;
    if (frame.cache === "hit") this.setCached(this.current, true);
    this.renderMeta();
  }

  /** Marks `turn` as answered from the response cache (or not); the badge shows the current turn's. */
  setCached(turn, cached) {
    turn.cached = Boolean(cached);
    if (turn === this.current) this.cachedBadge.hidden = !turn.cached;
  }

  markFirstToken() {
    if (this.firstTokenAt == null) {
      this.firstTokenAt = performance.now();
      this.setState("streaming");
      this.current.state = "streaming";
    }
  }

  appendChunk(text) {
    if (typeof text !== "string" || !text) return;
    const turn = this.current;
    this.markFirstToken();
    if (turn.answerStartedAt == null) {
      turn.answerStartedAt = performance.now();
      if (turn.reasoning) turn.setReasoningOpen(false);
    }
    turn.answer += text;
    this.chunks += 1;
    this.answerDirty = true;
    this.scheduleRender();
  }

  appendReasoning(text) {
    if (typeof text !== "string" || !text) return;
    const turn = this.current;
    this.markFirstToken();
    if (turn.reasoningStartedAt == null) {
      turn.reasoningStartedAt = performance.now();
      turn.reasoningNode.hidden = false;
      if (turn.answerStartedAt == null) turn.setReasoningOpen(true);
    }
    turn.reasoning += text;
    this.reasoningDirty = true;
    this.scheduleRender();
  }

  finish(frame) {
    const turn = this.current;
    this.server = frame;
    turn.server = frame;
    if (frame.cached === true) this.setCached(turn, true);
    this.flush();
    turn.state = "done";
    this.history.push({ role: "user", content: turn.prompt }, { role: "assistant", content: turn.answer });
    if (frame.finish_reason === "length") this.note(turn, "Cut off at the max tokens limit.");
    if (!turn.answer) this.note(turn, "The model returned no text.");
    this.setState("done");
    this.renderStats();
    this.renderMeta();
    this.followEnd();
  }

  /** A turn that did not finish stays on screen, marked, but out of the history. */
  fail(frame) {
    const turn = this.current;
    const cancelled = frame.code === "cancelled" || frame.status === 499;
    this.flush();
    turn.state = cancelled ? "cancelled" : "error";
    turn.node.classList.add("is-excluded");
    if (cancelled) {
      this.note(turn, "Stopped. This turn is left out of the conversation.");
    } else {
      turn.errorNode.replaceChildren();
      turn.errorNode.append(element("p", "error-message", frame.message || "The model could not answer."));
      const detail = [frame.code, frame.status ? `HTTP ${frame.status}` : null].filter(Boolean).join(" · ");
      if (detail) turn.errorNode.append(element("p", "error-detail", detail));
      turn.errorNode.hidden = false;
      this.note(turn, "This turn is left out of the conversation.");
    }
    this.setState(turn.state);
    this.renderStats();
    this.renderMeta();
    this.followEnd();
  }

  note(turn, text) {
    turn.noteNode.textContent = text;
    turn.noteNode.hidden = false;
  }

  clear() {
    cancelAnimationFrame(this.frame);
    this.frame = null;
    this.history = [];
    this.turns = [];
    this.previous = null;
    this.transcript.replaceChildren();
    this.current = this.addTurn();
    this.current.node.hidden = true;
    this.setCached(this.current, false);
    this.emptyNote.hidden = false;
    this.setState("idle");
    this.resetStats();
  }

  resetStats() {
    for (const dd of Object.values(this.stat)) {
      dd.textContent = "—";
      dd.classList.remove("is-estimate");
    }
    this.meta.replaceChildren();
    this.meta.hidden = true;
  }

  scheduleRender() {
    if (this.frame != null) return;
    this.frame = requestAnimationFrame((now) => {
      this.frame = null;
      if (now < this.skipUntil) {
        this.scheduleRender();
        return;
      }
      const started = performance.now();
      this.render(false);
      const took = performance.now() - started;
      this.skipUntil = took > SLOW_RENDER_MS ? started + took * 3 : 0;
    });
  }

  /** Renders whatever is pending now, for the end of a turn. */
  flush() {
    if (this.frame != null) {
      cancelAnimationFrame(this.frame);
      this.frame = null;
    }
    this.answerDirty = true;
    this.render(true);
  }

  render(final) {
    const turn = this.current;
    if (this.answerDirty) {
      this.answerDirty = false;
      turn.answerNode.replaceChildren(renderMarkdown(turn.answer));
      if (final) this.addCodeCopyButtons(turn.answerNode);
    }
    if (this.reasoningDirty) {
      this.reasoningDirty = false;
      turn.reasoningBody.textContent = turn.reasoning;
    }
    if (turn.reasoningStartedAt != null) {
      const end = turn.answerStartedAt ?? (final ? performance.now() : null);
      turn.reasoningSummary.textContent =
        end == null ? "Thinking…" : `Thought for ${formatMs(end - turn.reasoningStartedAt)}`;
    }
    if (!final) this.renderStats();
    this.followEnd();
  }

  renderStats() {
    const server = this.server;
    const now = performance.now();
    const turn = this.current;
    const setValue = (key, text, estimate) => {
      this.stat[key].textContent = text;
      this.stat[key].classList.toggle("is-estimate", Boolean(estimate));
    };

    if (server && server.ttft_ms != null) setValue("ttft", formatMs(server.ttft_ms));
    else if (this.firstTokenAt != null) setValue("ttft", formatMs(this.firstTokenAt - this.sentAt), true);
    else setValue("ttft", this.running ? "…" : "—");

    if (server && server.tokens_per_s != null) {
      setValue("speed", formatRate(server.tokens_per_s));
    } else if (this.firstTokenAt != null && now - this.firstTokenAt > 150 && this.running) {
      const tokens = estimateTokens(turn.answer + turn.reasoning, this.chunks);
      setValue("speed", `~${formatRate(tokens / ((now - this.firstTokenAt) / 1000))}`, true);
    } else if (!this.running) {
      setValue("speed", "—");
    }

    const usage = server && server.usage;
    if (usage && (usage.prompt_tokens != null || usage.completion_tokens != null)) {
      const approx = server.tokens_estimated ? "~" : "";
      setValue("tokens", `${approx}${formatTokens(usage.prompt_tokens)} in / ${formatTokens(usage.completion_tokens)} out`);
      this.stat.tokens.parentElement.title = `${formatTokens(usage.total_tokens)} tokens in total`;
    } else if (this.running && this.firstTokenAt != null) {
      setValue("tokens", `~${formatTokens(estimateTokens(turn.answer + turn.reasoning, this.chunks))} out`, true);
    }

    if (server) setValue("cost", formatCost(server.cost));
  }

  renderMeta() {
    const parts = [];
    const server = this.server || {};
    if (server.provider) parts.push(["via", server.provider]);
    else if (server.cached) parts.push(["via", "response cache"]);
    if (server.duration_ms != null) parts.push(["total", formatMs(server.duration_ms)]);
    const requestId = server.request_id || this.requestId;
    if (requestId) parts.push(["request", requestId]);
    this.meta.replaceChildren();
    for (const [label, value] of parts) {
      const item = element("span", "meta-item");
      item.append(element("span", "meta-label", `${label} `), element("span", "meta-value", value));
      this.meta.append(item);
    }
    this.meta.hidden = parts.length === 0;
  }

  addCodeCopyButtons(container) {
    for (const pre of container.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      if (!code) continue;
      // The label comes from CSS so the answer's text content stays exactly the model's words.
      const button = element("button", "code-copy");
      button.type = "button";
      button.setAttribute("aria-label", "Copy code");
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(code.textContent);
          button.classList.add("is-done");
          setTimeout(() => button.classList.remove("is-done"), 1500);
        } catch {
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
        }
      });
      pre.append(button);
    }
  }

  isAtEnd() {
    const body = this.body;
    return body.scrollHeight - body.scrollTop - body.clientHeight < 48;
  }

  followEnd() {
    if (!this.following) return;
    this.body.scrollTop = this.body.scrollHeight;
    this.autoScrollTop = this.body.scrollTop;
  }
}
