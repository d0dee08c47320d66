// One model's column: its conversation (one article per turn), the answer streaming in, the tool calls it makes and
// the results typed for them, its own parameters, and live stats. A column keeps its own history because models
// answer differently, so each one's next turn must build on its own previous answers.
//
// The stats are the gateway's wherever it has them: the time to first token comes with the model's first frame of
// output (the figure its done frame reports again), tokens and cost come with the done frame (or, for a model that
// failed or was stopped, with its error frame: what its usage record bills). While a model streams, the token count
// is the frames of output that arrived (each carries at least one token), so it never runs ahead of the final one,
// and a speed shows only once there is enough to measure.

import { renderMarkdown } from "./markdown.js";
import { formatCost, formatModelPrice, formatMs, formatRate, formatTokens } from "./format.js";
import { userContent } from "./images.js";
import { ModelParams } from "./params.js";

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
// A speed is shown once this many tokens came over this long (streaming.compare's SPEED_MIN_TOKENS and
// SPEED_MIN_SECONDS: the gateway reports none below them either).
const SPEED_MIN_TOKENS = 5;
const SPEED_MIN_MS = 150;
// A prompt longer than this is folded to a few lines, with "Show more".
const PROMPT_FOLD_CHARS = 600;
const PROMPT_FOLD_LINES = 8;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** One tool call of a model's answer: its name and arguments, and the result the user types for it. */
class ToolCallView {
  constructor(index) {
    this.index = index;
    this.id = "";
    this.name = "";
    this.arguments = "";
    this.node = element("div", "tool-call");
    this.node.dataset.testid = "tool-call";
    const head = element("div", "tool-call-head");
    head.append(element("span", "tool-call-label", "Tool call"));
    this.nameNode = element("code", "tool-call-name");
    this.nameNode.dataset.testid = "tool-call-name";
    this.idNode = element("span", "tool-call-id");
    head.append(this.nameNode, this.idNode);
    this.argsNode = element("pre", "tool-call-args");
    this.argsNode.dataset.testid = "tool-call-args";
    this.resultNode = element("label", "tool-result");
    this.resultNode.hidden = true;
    this.resultLabel = element("span", "tool-result-label", "Result to send back");
    this.resultInput = element("textarea", "tool-result-input");
    this.resultInput.rows = 2;
    this.resultInput.spellcheck = false;
    this.resultInput.placeholder = 'What the tool returned, e.g. {"temperature": 21}';
    this.resultNode.append(this.resultLabel, this.resultInput);
    this.node.append(head, this.argsNode, this.resultNode);
  }

  update({ id, name, arguments: args }, append) {
    if (id) this.id = id;
    if (name) this.name = name;
    if (typeof args === "string") this.arguments = append ? this.arguments + args : args;
    this.nameNode.textContent = this.name || "…";
    this.idNode.textContent = this.id;
    this.argsNode.textContent = this.arguments;
  }

  finish() {
    this.argsNode.textContent = prettyArguments(this.arguments);
  }

  /** Asks for the result (the call is waiting for one), or shows it read-only once it was sent. */
  askResult(asking, onInput) {
    this.resultNode.hidden = !asking;
    this.resultInput.readOnly = !asking;
    if (asking) {
      this.resultInput.dataset.testid = "tool-result";
      this.resultInput.setAttribute("aria-label", `Result of ${this.name}`);
      if (onInput && !this.listening) {
        this.resultInput.addEventListener("input", onInput);
        this.listening = true;
      }
    } else {
      delete this.resultInput.dataset.testid;
    }
  }

  get result() {
    return this.resultInput.value;
  }

  toMessage() {
    return { id: this.id, type: "function", function: { name: this.name, arguments: this.arguments || "{}" } };
  }
}

/** One exchange in a column: what the user sent (prompt, images, tool results) and this model's answer. */
class Turn {
  constructor() {
    this.prompt = "";
    this.images = [];
    // Tool messages sent at the start of this turn: [{role: "tool", tool_call_id, content, name}].
    this.results = [];
    this.answer = "";
    this.cached = false;
    this.reasoning = "";
    this.toolCalls = new Map();
    this.state = "idle";
    this.server = null;
    // Where this turn's messages start in the column's history, once it finished.
    this.historyStart = null;
    this.reasoningTouched = false;
    this.reasoningStartedAt = null;
    this.answerStartedAt = null;

    this.node = element("article", "turn");
    this.userNode = element("div", "turn-user");
    this.userBox = element("div", "turn-user-box");
    this.imagesNode = element("div", "turn-images");
    this.imagesNode.hidden = true;
    this.resultsNode = element("div", "turn-results");
    this.resultsNode.hidden = true;
    this.bubble = element("p", "bubble");
    this.foldButton = element("button", "link-button fold-button", "Show more");
    this.foldButton.type = "button";
    this.foldButton.hidden = true;
    this.foldButton.addEventListener("click", () => this.setFolded(!this.bubble.classList.contains("is-folded")));
    this.userBox.append(this.resultsNode, this.imagesNode, this.bubble, this.foldButton);
    this.userNode.append(this.userBox);

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
    this.toolsNode = element("div", "tool-calls");
    this.toolsNode.hidden = true;
    this.errorNode = element("div", "column-error");
    this.errorNode.hidden = true;
    this.errorNode.setAttribute("role", "alert");
    this.noteNode = element("p", "turn-note");
    this.noteNode.hidden = true;
    this.actionsNode = element("div", "turn-actions");
    this.actionsNode.hidden = true;

    this.node.append(
      this.userNode,
      this.reasoningNode,
      this.answerNode,
      this.toolsNode,
      this.errorNode,
      this.noteNode,
      this.actionsNode,
    );
  }

  /** The newest turn carries the data-testids, so there is exactly one of each per column. */
  setCurrent(current) {
    const marks = [
      [this.reasoningNode, "column-reasoning"],
      [this.answerNode, "column-output"],
      [this.errorNode, "column-error"],
      [this.toolsNode, "tool-calls"],
      [this.bubble, "column-prompt"],
      [this.foldButton, "show-more"],
    ];
    for (const [node, testid] of marks) {
      if (current) node.dataset.testid = testid;
      else delete node.dataset.testid;
    }
    if (!current) this.actionsNode.hidden = true;
  }

  setReasoningOpen(open) {
    if (this.reasoningTouched || this.reasoningNode.open === open) return;
    this.reasoningExpected = open;
    this.reasoningNode.open = open;
  }

  /** What the user sent: the prompt (folded when long), its images, the tool results. */
  showSent() {
    this.bubble.textContent = this.prompt;
    this.bubble.hidden = !this.prompt;
    const long = this.prompt.length > PROMPT_FOLD_CHARS || this.prompt.split("\n").length > PROMPT_FOLD_LINES;
    this.bubble.classList.toggle("is-foldable", long);
    this.foldButton.hidden = !long;
    this.setFolded(long);
    this.imagesNode.replaceChildren();
    for (const image of this.images) {
      const img = element("img", "turn-image");
      img.src = image.url;
      img.alt = image.name ? `Image sent: ${image.name}` : "Image sent";
      img.dataset.testid = "turn-image";
      this.imagesNode.append(img);
    }
    this.imagesNode.hidden = !this.images.length;
    this.resultsNode.replaceChildren();
    for (const result of this.results) {
      const card = element("div", "tool-result-sent");
      card.dataset.testid = "tool-result-sent";
      card.append(element("span", "tool-result-sent-label", `Result of ${result.name || "a tool call"}`));
      card.append(element("pre", "tool-result-sent-text", result.content));
      this.resultsNode.append(card);
    }
    this.resultsNode.hidden = !this.results.length;
  }

  setFolded(folded) {
    this.bubble.classList.toggle("is-folded", folded);
    this.foldButton.textContent = folded ? "Show more" : "Show less";
    this.foldButton.setAttribute("aria-expanded", folded ? "false" : "true");
  }

  /** The messages this turn sent, in the order the model read them. */
  inputMessages() {
    const messages = this.results.map(({ role, tool_call_id: id, content }) => ({ role, tool_call_id: id, content }));
    if (this.prompt || this.images.length) messages.push({ role: "user", content: userContent(this.prompt, this.images) });
    return messages;
  }

  answerMessage() {
    const calls = [...this.toolCalls.values()].map((call) => call.toMessage());
    const message = { role: "assistant", content: calls.length && !this.answer ? null : this.answer };
    if (calls.length) message.tool_calls = calls;
    return message;
  }

}

export class ModelColumn {
  /**
   * @param {{name: string, kinds?: string[], input_price_per_million: ?number, output_price_per_million: ?number}} model
   * @param {{onRemove: (name: string) => void, onRegenerate?: (name: string) => void,
   *          onCopy?: (name: string, kind: string) => void, onChange?: () => void}} handlers
   */
  constructor(model, { onRemove, onRegenerate, onCopy, onChange }) {
    this.model = model.name;
    this.info = model;
    this.history = [];
    this.turns = [];
    this.frame = null;
    this.skipUntil = 0;
    this.answerDirty = false;
    this.reasoningDirty = false;
    // The tool calls of the last answer, waiting for results: {turn, calls}.
    this.pending = null;
    // A column without these handlers (the arena's blind ones) offers neither regenerate nor its own settings.
    this.onRegenerate = onRegenerate || null;
    this.onChange = onChange || (() => {});
    this.params = new ModelParams(model.name, { onChange: () => this.renderParamsSummary() });
    this.onCopy = onCopy || null;
    this.build(model, onRemove, this.onCopy);
    this.current = this.addTurn();
    this.current.node.hidden = true;
    this.setState("idle");
    this.resetStats();
  }

  build(model, onRemove, onCopy) {
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
    this.titleNode = title;
    this.priceNode = price;
    if ((model.kinds || []).includes("vision")) {
      const vision = element("span", "column-kind", "vision");
      vision.title = "Reads images";
      titles.append(vision);
    }
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

    // Per-model actions: its own parameters, and its request as code.
    const toolbar = element("div", "column-toolbar");
    this.paramsToggle = element("button", "link-button column-params-toggle", "Parameters");
    this.paramsToggle.type = "button";
    this.paramsToggle.dataset.testid = "column-params-toggle";
    this.paramsToggle.setAttribute("aria-expanded", "false");
    this.paramsToggle.addEventListener("click", () => {
      const open = this.params.element.hidden;
      this.params.element.hidden = !open;
      this.paramsToggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
    this.paramsSummary = element("span", "column-params-summary");
    this.paramsSummary.dataset.testid = "column-params-summary";
    const copyCurl = element("button", "link-button", "curl");
    copyCurl.type = "button";
    copyCurl.dataset.testid = "column-copy-curl";
    copyCurl.title = `Copy this model's request as curl`;
    copyCurl.addEventListener("click", () => onCopy(this.model, "curl"));
    const copyPython = element("button", "link-button", "Python");
    copyPython.type = "button";
    copyPython.dataset.testid = "column-copy-python";
    copyPython.title = `Copy this model's request as Python`;
    copyPython.addEventListener("click", () => onCopy(this.model, "python"));
    const copyLabel = element("span", "column-toolbar-label", "Copy as");
    toolbar.append(this.paramsToggle, this.paramsSummary, copyLabel, copyCurl, copyPython);
    toolbar.hidden = !onCopy;

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
      ["ttft", "First token", "Time from sending to the first token of the answer or its reasoning, as the gateway measured it"],
      ["speed", "Speed", "Output tokens per second after the first token; shown once there are enough to measure"],
      ["tokens", "Tokens", "Prompt tokens in, completion tokens out; while streaming, the output that has arrived"],
      ["cost", "Cost", "Cost of this turn, as its usage record bills it"],
    ]) {
      const cell = element("div", "stat");
      cell.title = hint;
      const dt = element("dt", "stat-label", label);
      const dd = element("dd", "stat-value", "—");
      dd.dataset.testid = `stat-${key}`;
      cell.append(dt, dd);
      grid.append(cell);
      this.stat[key] = dd;
    }
    this.meta = element("p", "stats-meta");
    stats.append(grid, this.meta);

    root.append(head, toolbar, this.params.element, this.body, stats);
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

  /** A new title for the column (the arena names a side's model once it is revealed) and the line under it. */
  setLabel(title, detail) {
    this.titleNode.textContent = title;
    this.titleNode.title = title;
    this.priceNode.textContent = detail || "";
    this.priceNode.title = detail || "";
  }

  renderParamsSummary() {
    const summary = this.params.summary();
    this.paramsSummary.textContent = summary;
    this.paramsSummary.title = summary;
    this.paramsSummary.hidden = !summary;
    this.element.classList.toggle("has-own-params", Boolean(summary));
  }

  /** This model's own parameters for the request, or the problem with them. */
  ownParams() {
    if (!this.onCopy) return { values: {}, problem: null };
    return this.params.read();
  }

  // Tool calls waiting for results ---------------------------------------------------------------------------------

  /** Whether the last answer made tool calls that are waiting for results. */
  hasPendingCalls() {
    return Boolean(this.pending && this.pending.calls.length);
  }

  /** Every waiting call has a result typed. */
  toolResultsReady() {
    return this.hasPendingCalls() && this.pending.calls.every((call) => call.result.trim() !== "");
  }

  /** The first waiting call with no result yet (to point the user at it), or null. */
  missingResult() {
    if (!this.hasPendingCalls()) return null;
    return this.pending.calls.find((call) => call.result.trim() === "") || null;
  }

  pendingResultMessages() {
    if (!this.hasPendingCalls()) return [];
    return this.pending.calls.map((call) => ({ role: "tool", tool_call_id: call.id, content: call.result, name: call.name }));
  }

  /** The messages for this model's next turn: system prompt, its own history, the tool results typed for its last
   * answer's calls, the new prompt (with its images). */
  messagesFor(prompt, system, { images = [] } = {}) {
    const messages = [];
    if (system) messages.push({ role: "system", content: system });
    messages.push(...this.history);
    for (const { role, tool_call_id: id, content } of this.pendingResultMessages()) {
      messages.push({ role, tool_call_id: id, content });
    }
    if (prompt || images.length) messages.push({ role: "user", content: userContent(prompt || "", images) });
    return messages;
  }

  /** Whether the last turn can be run again for this model alone. */
  canRegenerate() {
    const turn = this.current;
    return !this.running && !turn.node.hidden && ["done", "error", "cancelled"].includes(turn.state) &&
      (Boolean(turn.prompt) || turn.images.length > 0 || turn.results.length > 0);
  }

  /** The messages that ran the last turn: to run it again for a new answer. */
  regenerateMessages(system) {
    const turn = this.current;
    const messages = [];
    if (system) messages.push({ role: "system", content: system });
    const before = turn.historyStart != null ? this.history.slice(0, turn.historyStart) : this.history;
    messages.push(...before, ...turn.inputMessages());
    return messages;
  }

  // A turn's life ---------------------------------------------------------------------------------------------------

  beginTurn(prompt, sentAt, { images = [] } = {}) {
    const placeholder = this.current.node.hidden && this.current.state === "idle";
    const turn = placeholder ? this.current : this.addTurn();
    turn.node.hidden = false;
    turn.prompt = prompt || "";
    turn.images = images;
    turn.results = this.pendingResultMessages();
    if (this.pending) {
      for (const call of this.pending.calls) call.askResult(false);
      this.pending.turn.noteNode.hidden = true;
      this.sentPending = this.pending;
      this.pending = null;
    } else {
      this.sentPending = null;
    }
    turn.showSent();
    turn.state = "waiting";
    this.previous = placeholder ? null : this.current;
    this.regenerating = null;
    this.current = turn;
    this.startStats(sentAt);
    this.setCached(turn, false);
    this.emptyNote.hidden = true;
    this.setState("waiting");
    this.renderStats();
    this.following = true;
    this.followEnd();
  }

  /** Run the last turn again: a new turn with the same input takes its place; the old one is kept aside until
   * the new one ends (or comes back, when the gateway refuses the run). */
  beginRegenerate(sentAt) {
    const old = this.current;
    this.regenerating = { turn: old, history: [...this.history], pending: this.pending };
    if (old.historyStart != null) this.history = this.history.slice(0, old.historyStart);
    this.pending = null;
    this.sentPending = null;
    const turn = this.addTurn();
    turn.prompt = old.prompt;
    turn.images = old.images;
    turn.results = old.results;
    turn.showSent();
    old.node.hidden = true;
    turn.state = "waiting";
    this.previous = null;
    this.current = turn;
    this.startStats(sentAt);
    this.setCached(turn, false);
    this.setState("waiting");
    this.renderStats();
    this.following = true;
    this.followEnd();
  }

  /** The regenerated turn ended: the answer it replaced goes. */
  dropReplaced() {
    if (!this.regenerating) return;
    const old = this.regenerating.turn;
    this.regenerating = null;
    old.node.remove();
    this.turns = this.turns.filter((turn) => turn !== old);
  }

  startStats(sentAt) {
    this.sentAt = sentAt;
    this.firstTokenAt = null;
    this.ttftMs = null;
    this.liveTokens = 0;
    this.outputFrames = 0;
    this.server = null;
    this.current.server = null;
    this.requestId = null;
    this.current.actionsNode.hidden = true;
    this.resetStats();
  }

  /** A turn that ran elsewhere (a request from the request log): shown and kept in the history, no stats. */
  replayTurn(prompt, answer) {
    this.beginTurn(prompt, performance.now());
    this.current.answer = answer;
    this.finish({});
  }

  /**
   * A turn of a saved run, as the server kept it: the prompt, this model's answer (and reasoning, and tool calls),
   * and its stats or its error. Answers that finished rejoin the column's history, so the run can be continued.
   * @param {string} prompt
   * @param {{status: string, text?: string, reasoning?: string, done?: object, error?: object}} saved
   * @param {{results?: {tool_call_id: string, content: string}[]}} sent  tool results this turn sent back
   */
  restoreTurn(prompt, saved, { results = null } = {}) {
    if (this.hasPendingCalls() && Array.isArray(results)) {
      // The results this turn sent for the last answer's tool calls, as the server kept them.
      for (const call of this.pending.calls) {
        const sent = results.find((result) => result.tool_call_id === call.id);
        if (sent) call.resultInput.value = sent.content;
      }
    }
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
    if (this.sentPending) {
      this.pending = this.sentPending;
      for (const call of this.pending.calls) call.askResult(true);
      this.pending.turn.noteNode.hidden = false;
      this.sentPending = null;
    }
    if (this.regenerating) {
      const kept = this.regenerating;
      this.regenerating = null;
      turn.node.remove();
      this.turns.pop();
      this.current = kept.turn;
      this.current.node.hidden = false;
      this.current.setCurrent(true);
      this.history = kept.history;
      this.pending = kept.pending;
      this.server = this.current.server || null;
      this.setCached(this.current, this.current.cached);
      this.setState(this.current.state);
      this.renderStats();
      this.renderMeta();
      this.showActions();
      this.previous = null;
      return;
    }
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
      this.showActions();
    } else {
      turn.prompt = "";
      turn.images = [];
      turn.results = [];
      turn.state = "idle";
      turn.showSent();
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

  /** A frame of output arrived: the first one carries the gateway's time to it. `counted`: it carried text. */
  markOutput(frame, counted) {
    if (frame && typeof frame.ttft_ms === "number" && this.ttftMs == null) this.ttftMs = frame.ttft_ms;
    if (this.firstTokenAt == null) {
      this.firstTokenAt = performance.now();
      this.setState("streaming");
      this.current.state = "streaming";
    }
    this.outputFrames += 1;
    if (counted) this.liveTokens += 1;
  }

  appendChunk(text, frame) {
    if (typeof text !== "string" || !text) return;
    const turn = this.current;
    this.markOutput(frame, true);
    if (turn.answerStartedAt == null) {
      turn.answerStartedAt = performance.now();
      if (turn.reasoning) turn.setReasoningOpen(false);
    }
    turn.answer += text;
    this.answerDirty = true;
    this.scheduleRender();
  }

  appendReasoning(text, frame) {
    if (typeof text !== "string" || !text) return;
    const turn = this.current;
    this.markOutput(frame, true);
    if (turn.reasoningStartedAt == null) {
      turn.reasoningStartedAt = performance.now();
      turn.reasoningNode.hidden = false;
      if (turn.answerStartedAt == null) turn.setReasoningOpen(true);
    }
    turn.reasoning += text;
    this.reasoningDirty = true;
    this.scheduleRender();
  }

  toolCallView(turn, index) {
    let call = turn.toolCalls.get(index);
    if (!call) {
      call = new ToolCallView(index);
      turn.toolCalls.set(index, call);
      turn.toolsNode.append(call.node);
      turn.toolsNode.hidden = false;
    }
    return call;
  }

  /** A piece of a tool call: its id and name first, then its arguments as they stream. */
  appendToolCall(frame) {
    if (!frame || typeof frame.index !== "number") return;
    const turn = this.current;
    this.markOutput(frame, typeof frame.arguments === "string" && frame.arguments !== "");
    if (turn.reasoning) turn.setReasoningOpen(false);
    this.toolCallView(turn, frame.index).update(frame, true);
    this.scheduleRender();
  }

  finish(frame) {
    const turn = this.current;
    this.server = frame;
    turn.server = frame;
    if (frame.cached === true) this.setCached(turn, true);
    if (Array.isArray(frame.tool_calls)) {
      // The done frame has the calls whole: they replace what the pieces made.
      frame.tool_calls.forEach((call, index) => {
        const fn = call.function || {};
        this.toolCallView(turn, index).update({ id: call.id, name: fn.name, arguments: fn.arguments || "" }, false);
      });
    }
    this.flush();
    this.dropReplaced();
    turn.state = "done";
    turn.historyStart = this.history.length;
    this.history.push(...turn.inputMessages(), turn.answerMessage());
    this.sentPending = null;
    const calls = [...turn.toolCalls.values()];
    for (const call of calls) call.finish();
    if (calls.length) {
      this.pending = { turn, calls };
      for (const call of calls) call.askResult(true, () => this.onChange());
      this.note(turn, `Type what each call returned, then send: it goes back to ${this.model} as the tool's answer.`);
    }
    if (frame.finish_reason === "length") this.note(turn, "Cut off at the max tokens limit.");
    if (!turn.answer && !calls.length) this.note(turn, "The model returned no text.");
    this.setState("done");
    this.renderStats();
    this.renderMeta();
    this.showActions();
    this.followEnd();
  }

  /** A turn that did not finish stays on screen, marked, but out of the history; what it bills is shown. */
  fail(frame) {
    const turn = this.current;
    const cancelled = frame.code === "cancelled" || frame.status === 499;
    if (frame.usage || frame.cost != null || frame.ttft_ms != null) {
      this.server = { ...frame, type: "error" };
      turn.server = this.server;
    }
    this.flush();
    this.dropReplaced();
    turn.state = cancelled ? "cancelled" : "error";
    turn.node.classList.add("is-excluded");
    if (this.sentPending) {
      // The results it carried were not taken: they wait to be sent again.
      this.pending = this.sentPending;
      this.sentPending = null;
      for (const call of this.pending.calls) call.askResult(true, () => this.onChange());
      this.pending.turn.noteNode.hidden = false;
    }
    for (const call of turn.toolCalls.values()) call.finish();
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
    this.showActions();
    this.followEnd();
  }

  /** Under the last answer: run it again. */
  showActions() {
    const turn = this.current;
    turn.actionsNode.replaceChildren();
    if (!this.onRegenerate || !this.canRegenerate()) {
      turn.actionsNode.hidden = true;
      return;
    }
    const regenerate = element("button", "link-button turn-regenerate", "Regenerate");
    regenerate.type = "button";
    regenerate.dataset.testid = "column-regenerate";
    regenerate.title = `Ask ${this.model} again for a new answer to this turn; the other columns stay as they are`;
    regenerate.addEventListener("click", () => this.onRegenerate(this.model));
    turn.actionsNode.append(regenerate);
    turn.actionsNode.hidden = false;
  }

  /** Regenerate is offered only while the page runs nothing. */
  setIdle(idle) {
    for (const button of this.element.querySelectorAll(".turn-regenerate")) button.disabled = !idle;
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
    this.pending = null;
    this.sentPending = null;
    this.regenerating = null;
    this.transcript.replaceChildren();
    this.current = this.addTurn();
    this.current.node.hidden = true;
    this.setCached(this.current, false);
    this.emptyNote.hidden = false;
    this.setState("idle");
    this.resetStats();
    this.onChange();
  }

  resetStats() {
    for (const dd of Object.values(this.stat)) {
      dd.textContent = "—";
      dd.classList.remove("is-estimate");
      dd.removeAttribute("title");
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

  /** Output tokens per second while streaming, once there is enough to measure; else null. */
  liveSpeed(now) {
    if (this.firstTokenAt == null || this.outputFrames < 2 || this.liveTokens < SPEED_MIN_TOKENS) return null;
    const elapsed = now - this.firstTokenAt;
    if (elapsed < SPEED_MIN_MS) return null;
    return this.liveTokens / (elapsed / 1000);
  }

  renderStats() {
    const server = this.server;
    const running = this.running;
    const setValue = (key, text, { estimate = false, title = null } = {}) => {
      const dd = this.stat[key];
      dd.textContent = text;
      dd.classList.toggle("is-estimate", estimate);
      if (title) dd.title = title;
      else dd.removeAttribute("title");
    };

    const ttft = server && server.ttft_ms != null ? server.ttft_ms : this.ttftMs;
    if (ttft != null) setValue("ttft", formatMs(ttft));
    else setValue("ttft", running ? "…" : "—");

    if (server && server.type !== "error" && server.tokens_per_s != null) {
      setValue("speed", formatRate(server.tokens_per_s));
    } else if (running) {
      const rate = this.liveSpeed(performance.now());
      if (rate != null) setValue("speed", `~${formatRate(rate)}`, { estimate: true, title: "Measured as the answer arrives" });
      else setValue("speed", "…", { title: "Shown once enough tokens have arrived to measure" });
    } else if (server && server.usage) {
      setValue("speed", "—", { title: "Too few tokens, or too little time, to measure a speed" });
    } else {
      setValue("speed", "—");
    }

    const usage = server && server.usage;
    if (usage && (usage.prompt_tokens != null || usage.completion_tokens != null)) {
      const approx = server.tokens_estimated ? "~" : "";
      setValue("tokens", `${approx}${formatTokens(usage.prompt_tokens)} in / ${approx}${formatTokens(usage.completion_tokens)} out`, {
        estimate: Boolean(server.tokens_estimated),
        title: `${formatTokens(usage.total_tokens)} tokens in total${server.tokens_estimated ? ", counted by the gateway (the provider reported none)" : ""}`,
      });
    } else if (running && this.liveTokens > 0) {
      setValue("tokens", `~${formatTokens(this.liveTokens)} out`, {
        estimate: true,
        title: "Output so far; the exact count comes when the model finishes",
      });
    } else {
      setValue("tokens", running ? "…" : "—");
    }

    if (server && server.cost != null) {
      setValue("cost", formatCost(server.cost), {
        title: server.type === "error" ? "What the usage record of this unfinished turn bills" : null,
      });
    } else {
      setValue("cost", "—");
    }
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
