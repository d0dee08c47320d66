// The blind arena: two models answer the same prompt in columns labelled "Model A" and "Model B". The server
// hides which is which: every frame of a battle names its side ("a" or "b"), never a model, a provider or a cost,
// until the user votes; the vote's answer (the reveal) names both. The playground page (playground.js) runs a
// battle's turns like any other run; this module owns the toggle, the two columns, the vote bar and the reveal.

import { ModelColumn } from "./column.js";
import { formatCost } from "./format.js";

export const SIDES = ["a", "b"];
export const LABELS = { a: "Model A", b: "Model B" };
const HIDDEN_NOTE = "Hidden until you vote";
const OUTCOMES = [
  ["a", "A is better", "vote-a"],
  ["tie", "It's a tie", "vote-tie"],
  ["bad", "Both are bad", "vote-bad"],
  ["b", "B is better", "vote-b"],
];
const VOTED = { a: "You voted: Model A is better.", b: "You voted: Model B is better.", tie: "You voted: a tie.", bad: "You voted: both are bad." };

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function csrfToken() {
  const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
  return input ? input.value : "";
}

/** "via provider · $cost" for a revealed side. */
function revealDetail(side, shown) {
  const parts = [LABELS[side]];
  if (shown.provider) parts.push(`via ${shown.provider}`);
  if (shown.cost != null) parts.push(formatCost(Number(shown.cost)));
  return parts.join(" · ");
}

export class Arena {
  /**
   * @param {{voteUrl: string, workspace: HTMLElement, columnsHost: HTMLElement, onToggle: (on: boolean) => void,
   *          onVoted: () => void}} options
   */
  constructor({ voteUrl, workspace, columnsHost, onToggle, onVoted }) {
    this.voteUrl = voteUrl;
    this.workspace = workspace;
    this.onVoted = onVoted;
    this.toggle = document.getElementById("arena-toggle");
    this.picksHost = document.getElementById("arena-picks");
    this.columns = SIDES.map((side) => {
      const column = new ModelColumn(
        { name: LABELS[side], input_price_per_million: null, output_price_per_million: null },
        { onRemove: () => {} },
      );
      column.element.dataset.side = side;
      return column;
    });
    // The battle of the turn on screen: its id, its results once over, and its vote and reveal.
    this.turn = null;
    this.previous = null;
    this.running = false;
    this.names = null;
    this.buildVoteBar(columnsHost);
    this.buildPicks();
    this.setNames(null);
    this.toggle.addEventListener("change", () => {
      this.apply();
      onToggle(this.on);
    });
    this.apply();
  }

  get on() {
    return this.toggle.checked;
  }

  /** The column titles ("Model A", "Model B") the page's run uses as its models. */
  get labels() {
    return this.columns.map((column) => column.model);
  }

  buildPicks() {
    const hint = element("p", "field-hint arena-hint", "Two models answer as Model A and Model B. Pick them, or leave Random to draw from your key's tier.");
    this.picks = [0, 1].map((index) => {
      const select = element("select", "arena-pick");
      select.dataset.testid = "arena-pick";
      select.setAttribute("aria-label", `Arena model ${index + 1}`);
      return select;
    });
    const row = element("div", "arena-picks-row");
    row.append(...this.picks);
    this.picksHost.replaceChildren(row, hint);
  }

  /** The key's models, offered as picks (Random first). */
  setModels(models) {
    for (const select of this.picks) {
      const current = select.value;
      select.replaceChildren(new Option("Random", ""));
      for (const model of models) select.append(new Option(model.name, model.name));
      select.value = [...select.options].some((option) => option.value === current) ? current : "";
    }
  }

  buildVoteBar(columnsHost) {
    this.bar = element("section", "arena-vote");
    this.bar.dataset.testid = "arena-vote";
    this.bar.setAttribute("aria-label", "Vote");
    this.bar.hidden = true;
    this.question = element("p", "arena-question");
    this.question.setAttribute("aria-live", "polite");
    const buttons = element("div", "arena-buttons");
    this.buttons = OUTCOMES.map(([outcome, label, testid]) => {
      const button = element("button", "button arena-button", label);
      button.type = "button";
      button.dataset.testid = testid;
      button.dataset.outcome = outcome;
      button.addEventListener("click", () => this.vote(outcome));
      buttons.append(button);
      return button;
    });
    this.revealNode = element("p", "arena-reveal");
    this.revealNode.dataset.testid = "arena-reveal";
    this.revealNode.hidden = true;
    this.bar.append(this.question, buttons, this.revealNode);
    columnsHost.after(this.bar);
  }

  apply() {
    this.workspace.classList.toggle("is-arena", this.on);
    this.picksHost.hidden = !this.on;
    this.render();
  }

  setRunning(running) {
    if (this.running && !running && this.turn && this.turn.pending) {
      // The turn was refused before it started (no `saved` frame): the one before it is on screen again.
      this.turn = this.previous;
    }
    this.running = running;
    this.toggle.disabled = running;
    for (const select of this.picks) select.disabled = running;
    this.render();
  }

  /** Empty columns and no battle: a new arena conversation (its models drawn again on the next send). */
  clear() {
    for (const column of this.columns) column.clear();
    this.turn = null;
    this.previous = null;
    this.setNames(null);
    this.render();
  }

  /** The request the page sends for `prompt`: the same history for both sides on a new battle, each side's
   * own history on the next turn of one. */
  request(prompt, settings, keyId) {
    const [a, b] = this.columns;
    return {
      arena: true,
      keyId,
      models: this.labels,
      picks: this.picks.map((select) => select.value).filter(Boolean),
      messagesBySide: { a: a.messagesFor(prompt, settings.system), b: b.messagesFor(prompt, settings.system) },
      temperature: settings.temperature,
      maxTokens: settings.maxTokens,
    };
  }

  chatFrame(request, runId) {
    // The turn on screen gives way to the new one; a refusal before it starts puts it back (setRunning).
    this.previous = this.turn;
    this.turn = { pending: true };
    const frame = { type: "chat", arena: true, key_id: request.keyId };
    if (runId == null) {
      // A new battle: its sides are drawn on the server, so neither has a history of its own yet.
      frame.messages = request.messagesBySide.a;
      const picks = [...new Set(request.picks)];
      if (picks.length) frame.models = picks;
    } else {
      frame.run_id = runId;
      frame.messages_by_side = request.messagesBySide;
    }
    if (request.temperature != null) frame.temperature = request.temperature;
    if (request.maxTokens != null) frame.max_tokens = request.maxTokens;
    return frame;
  }

  /** A frame from the socket as the page's run reads it: a side's frame addressed to its column's label. */
  receive(frame) {
    if ((frame.type === "saved" || frame.type === "resumed") && frame.arena && frame.arena.battle_id) {
      if (!this.turn || this.turn.battleId !== frame.arena.battle_id) this.turn = { battleId: frame.arena.battle_id };
      this.render();
      return frame;
    }
    if (frame.type === "complete" && frame.results && this.turn && this.turn.battleId && !frame.model) {
      const results = {};
      let blind = false;
      for (const side of SIDES) {
        if (frame.results[side]) {
          results[LABELS[side]] = frame.results[side];
          blind = true;
        }
      }
      if (!blind) return frame;
      this.turn.results = frame.results;
      this.render();
      return { ...frame, results };
    }
    if (typeof frame.side === "string" && LABELS[frame.side] && frame.model == null) {
      return { ...frame, model: LABELS[frame.side] };
    }
    return frame;
  }

  /**
   * A saved run reopened: the toggle follows it, and an arena run's turns fill the two columns (all but a turn
   * still running, which the page resumes). Returns whether it is an arena run.
   */
  restore(saved, { running }) {
    const arena = Boolean(saved.arena);
    this.toggle.checked = arena;
    for (const column of this.columns) column.clear();
    this.turn = null;
    this.previous = null;
    this.setNames(null);
    const turns = Array.isArray(saved.turns) ? saved.turns : [];
    if (arena) {
      turns.forEach((turn, index) => {
        const last = index === turns.length - 1;
        const info = turn.arena || {};
        if (info.reveal) this.setNames(info.reveal);
        if (last) {
          this.turn = {
            battleId: info.battle_id,
            results: running ? null : turn.answers,
            vote: info.vote || null,
            reveal: info.reveal || null,
          };
        }
        if (running && last) return;
        this.columns.forEach((column, i) => {
          const answer = (turn.answers || {})[SIDES[i]] || { status: "interrupted" };
          column.restoreTurn(turn.prompt, answer.status === "running" ? { status: "interrupted" } : answer);
        });
      });
    }
    this.apply();
    return arena;
  }

  /** Both columns under their labels, or (after a vote) under their models' names. */
  setNames(reveal) {
    this.names = reveal;
    this.columns.forEach((column, i) => {
      const side = SIDES[i];
      const shown = reveal && reveal[side];
      if (shown && shown.model) column.setLabel(shown.model, revealDetail(side, shown));
      else column.setLabel(LABELS[side], HIDDEN_NOTE);
    });
  }

  votable() {
    const results = this.turn && this.turn.results;
    return Boolean(results) && SIDES.every((side) => results[side] && results[side].status === "done");
  }

  render() {
    const turn = this.turn;
    const shown = this.on && turn && !turn.pending;
    this.bar.hidden = !shown;
    if (!shown) return;
    const voted = Boolean(turn.vote);
    const ready = !this.running && !voted && !turn.voting && !turn.closed && this.votable() && Boolean(turn.battleId);
    for (const button of this.buttons) {
      button.disabled = !ready;
      button.classList.toggle("is-chosen", voted && button.dataset.outcome === turn.vote);
    }
    this.bar.dataset.state = voted ? "voted" : ready ? "ready" : this.running ? "running" : "closed";
    if (voted) this.question.textContent = VOTED[turn.vote] || "You voted.";
    else if (turn.error) this.question.textContent = turn.error;
    else if (this.running || !turn.results) this.question.textContent = this.running ? "Vote once both answers have finished." : "This turn did not finish, so it cannot be voted on.";
    else if (ready) this.question.textContent = "Which answer is better? The names show once you vote.";
    else this.question.textContent = "A stopped or failed answer cannot be voted on: the models stay hidden.";
    this.revealNode.hidden = !turn.reveal;
    if (turn.reveal) {
      this.revealNode.replaceChildren();
      SIDES.forEach((side, i) => {
        const part = element("span", "arena-reveal-side");
        part.dataset.testid = `reveal-${side}`;
        part.append(element("span", "arena-reveal-label", `${LABELS[side]} was `), element("strong", "arena-reveal-name", turn.reveal[side].model));
        const detail = [];
        if (turn.reveal[side].provider) detail.push(`via ${turn.reveal[side].provider}`);
        if (turn.reveal[side].cost != null) detail.push(formatCost(Number(turn.reveal[side].cost)));
        if (detail.length) part.append(` (${detail.join(", ")})`);
        if (i === 0) part.append("; ");
        this.revealNode.append(part);
      });
    }
  }

  async vote(outcome) {
    const turn = this.turn;
    if (!turn || !turn.battleId || turn.vote || turn.voting) return;
    turn.voting = true;
    turn.error = null;
    this.render();
    let body = null;
    let status = 0;
    try {
      const response = await fetch(this.voteUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ battle_id: turn.battleId, outcome }),
      });
      status = response.status;
      body = await response.json().catch(() => null);
    } catch {
      body = null;
    }
    turn.voting = false;
    if (status === 200 && body && body.a && body.b) {
      turn.vote = outcome;
      turn.reveal = body;
      this.setNames(body);
      this.onVoted();
    } else {
      const message = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
      turn.error = message ? `The vote was not counted: ${message}` : "The vote was not counted: the gateway did not answer. Try again.";
      // Counted before (another tab), or no longer votable: asking again cannot help.
      if (body && body.error && [404, 409].includes(status)) turn.closed = true;
    }
    this.render();
  }
}
