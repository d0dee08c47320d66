// The playground page: settings, the model columns, the prompt, and one websocket to the gateway.
// A "run" is one prompt sent to every selected model; frames from the server are routed to the
// column of the model they name, and frames without a model concern the run as a whole.
// The server saves every conversation (the History list reopens them) and keeps a turn streaming when the
// page goes away: the page remembers its conversation in the URL (?run=<id>), and after a reload, or a
// dropped connection, it asks for the turn's frames again from where it was (each frame has a `seq`).

import { Arena } from "./arena.js";
import { GatewaySocket } from "./connection.js";
import { ModelColumn } from "./column.js";
import { Composer } from "./composer.js";
import { formatModelPrice, formatMs } from "./format.js";
import { fetchRun, fetchRuns, renderHistory } from "./history.js";
import { fetchLogged, loggedTurns } from "./logged.js";
import { ShareControl } from "./share.js";
import { ScrollSync } from "./scrollsync.js";
import { curlSnippet, pythonSnippet } from "./snippets.js";
import { ColumnPager } from "./swipe.js";

const config = JSON.parse(document.getElementById("playground-config").textContent);
const STORAGE_KEY = "aigateway.playground.settings";
// The open conversation of this tab, besides ?run= in the URL.
const RUN_STORAGE_KEY = "aigateway.playground.run";
// Pauses before each try to reconnect to a turn still streaming; the server keeps it going for a minute.
const RECONNECT_DELAYS_MS = [300, 1000, 2000, 4000, 8000, 8000, 8000, 8000, 8000];
// The consumer closes a socket it cannot authenticate with this code.
const CLOSE_UNAUTHENTICATED = 4401;
const EXAMPLE_PROMPT = "Hello! What can you do?";

const byId = (id) => document.getElementById(id);
const ui = {
  workspace: byId("workspace"),
  keyPicker: byId("key-picker"),
  modelPicker: byId("model-picker"),
  modelOptions: byId("model-options"),
  modelCap: byId("model-cap"),
  system: byId("system-prompt"),
  temperature: byId("temperature"),
  temperatureRange: byId("temperature-range"),
  temperatureReset: byId("temperature-reset"),
  maxTokens: byId("max-tokens"),
  settingsToggle: byId("settings-toggle"),
  settingsPanel: byId("settings-panel"),
  settingsSummary: byId("settings-summary"),
  status: byId("status"),
  banner: byId("banner"),
  bannerText: byId("banner-text"),
  bannerClose: byId("banner-close"),
  columns: byId("columns"),
  composer: byId("composer"),
  prompt: byId("prompt"),
  send: byId("send"),
  stop: byId("stop"),
  newChat: byId("new-chat"),
  copyCurl: byId("copy-curl"),
  copyPython: byId("copy-python"),
  dialog: byId("snippet-dialog"),
  snippet: byId("snippet"),
  snippetTitle: byId("snippet-title"),
  snippetNote: byId("snippet-note"),
  snippetCopy: byId("snippet-copy"),
  snippetClose: byId("snippet-close"),
  history: byId("history"),
  historyList: byId("history-list"),
  historyNote: byId("history-note"),
};

const state = {
  key: config.keys[0],
  selected: [],
  // Columns outlive deselection so a model picked again resumes its own conversation.
  columns: new Map(),
  run: null,
  lastRequest: null,
  // The saved conversation the columns show (its server id), and the History list.
  runId: null,
  runs: [],
};

// The blind arena (its toggle, its two columns and the vote) and the Share action of the open run.
const arena = new Arena({
  voteUrl: config.arena_vote_url,
  workspace: ui.workspace,
  columnsHost: ui.columns,
  onToggle: () => {
    newChat();
    syncColumns();
  },
  onVoted: () => refreshHistory(),
});
const share = new ShareControl({ button: byId("share-run"), runsUrl: config.runs_url });
// Tools, more parameters and an image for the prompt; synced scrolling; the phone's column position.
const composer = new Composer({
  settingsPanel: ui.settingsPanel,
  form: ui.composer,
  prompt: ui.prompt,
  actions: ui.composer.querySelector(".composer-actions"),
  maxFrameBytes: config.max_frame_bytes,
  onChange: () => {
    updateSummary();
    updateControls();
    save();
  },
  onError: (message) => showBanner(message),
});
new ScrollSync(ui.columns, document.querySelector(".stage-actions"));
new ColumnPager(ui.columns);


function loadSaved() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY)) || {};
  } catch {
    return {};
  }
}

function save() {
  const saved = loadSaved();
  const modelsByKey = saved.modelsByKey || {};
  modelsByKey[state.key.id] = state.selected;
  try {
    localStorage.setItem(
      STORAGE_KEY,
      JSON.stringify({
        keyId: state.key.id,
        modelsByKey,
        system: ui.system.value,
        temperature: ui.temperature.value,
        maxTokens: ui.maxTokens.value,
        ...composer.saved(),
      }),
    );
  } catch {
    // Storage may be full or disabled; settings then last for this page only.
  }
}


function setStatus(text, level = "idle") {
  ui.status.textContent = text;
  ui.status.dataset.level = level;
}

function showBanner(message, code, action) {
  ui.bannerText.replaceChildren();
  const text = document.createElement("span");
  text.textContent = message || "The request could not be run.";
  ui.bannerText.append(text);
  if (code) {
    const detail = document.createElement("span");
    detail.className = "banner-code";
    detail.textContent = code;
    ui.bannerText.append(" ", detail);
  }
  if (action) {
    const link = document.createElement("a");
    link.className = "banner-action";
    link.href = action.href;
    link.textContent = action.text;
    ui.bannerText.append(" ", link);
  }
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerText.replaceChildren();
}


function capOf(key) {
  return Math.max(1, Number(key.max_compare_models) || 1);
}

function defaultSelection(key) {
  // Models whose every provider is marked down are left out, unless nothing else is left.
  const up = key.models.filter((model) => !model.down);
  const names = (up.length ? up : key.models).map((model) => model.name);
  return names.slice(0, Math.min(2, capOf(key)));
}

function selectKey(key, preferred) {
  state.key = key;
  ui.keyPicker.value = String(key.id);
  const names = new Set(key.models.map((model) => model.name));
  let selection = (preferred || []).filter((name) => names.has(name)).slice(0, capOf(key));
  if (!selection.length) selection = defaultSelection(key);
  state.selected = selection;
  arena.setModels(key.models);
  renderModelPicker();
  syncColumns();
}

function renderModelPicker() {
  const key = state.key;
  ui.modelOptions.replaceChildren();
  for (const model of key.models) {
    const label = document.createElement("label");
    label.className = "model-option";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = model.name;
    input.dataset.testid = "model-option";
    input.checked = state.selected.includes(model.name);
    input.addEventListener("change", onModelToggle);
    const text = document.createElement("span");
    text.className = "model-option-text";
    const name = document.createElement("span");
    name.className = "model-name";
    name.textContent = model.name;
    const price = document.createElement("span");
    price.className = "model-price";
    price.textContent = formatModelPrice(model);
    text.append(name, price);
    label.append(input, text);
    if (model.down) {
      label.classList.add("is-down");
      label.title = "Every provider serving this model is marked down by the health checks";
      price.textContent = `Provider down · ${price.textContent}`;
    }
    ui.modelOptions.append(label);
  }
  updateModelCap();
}

function updateModelCap() {
  const key = state.key;
  const cap = capOf(key);
  const full = state.selected.length >= cap;
  const running = Boolean(state.run);
  for (const input of ui.modelOptions.querySelectorAll("input")) {
    input.disabled = running || (!input.checked && full);
    input.closest(".model-option").classList.toggle("is-unavailable", !input.checked && full);
  }
  ui.modelPicker.classList.toggle("is-full", full);
  if (!key.models.length) {
    ui.modelCap.textContent = `The ${key.tier} tier of this key allows no models.`;
  } else if (full && key.models.length > cap) {
    ui.modelCap.textContent =
      `${cap} of ${cap} selected: the ${key.tier} tier compares up to ${cap} model${cap === 1 ? "" : "s"} at once.`;
  } else {
    ui.modelCap.textContent = `${state.selected.length} of up to ${cap} selected.`;
  }
  updateSummary();
}

function onModelToggle(event) {
  const name = event.target.value;
  const order = state.key.models.map((model) => model.name);
  const chosen = new Set(state.selected);
  if (event.target.checked) chosen.add(name);
  else chosen.delete(name);
  state.selected = order.filter((model) => chosen.has(model)).slice(0, capOf(state.key));
  updateModelCap();
  syncColumns();
  save();
}

function removeModel(name) {
  if (state.run) return;
  state.selected = state.selected.filter((model) => model !== name);
  for (const input of ui.modelOptions.querySelectorAll("input")) {
    if (input.value === name) input.checked = false;
  }
  updateModelCap();
  syncColumns();
  save();
}

function columnFor(model) {
  let column = state.columns.get(model.name);
  if (!column) {
    column = new ModelColumn(model, {
      onRemove: removeModel,
      onRegenerate: regenerate,
      onCopy: (name, kind) => showSnippet(kind, name),
      onChange: updateControls,
    });
    state.columns.set(model.name, column);
  }
  return column;
}

function syncColumns() {
  const models = state.key.models.filter((model) => state.selected.includes(model.name));
  const wanted = arena.on ? arena.columns : models.map(columnFor);
  const children = [...ui.columns.children];
  if (wanted.length !== children.length || wanted.some((column, i) => column.element !== children[i])) {
    ui.columns.replaceChildren(...wanted.map((column) => column.element));
  }
  if (!wanted.length) ui.columns.append(emptyColumnsNote());
  ui.columns.dataset.count = String(wanted.length);
  for (const column of wanted) column.setRemovable(wanted.length > 1 && !state.run);
  composer.setModels(arena.on ? [] : models);
  updateControls();
}

function emptyColumnsNote() {
  const note = document.createElement("div");
  note.className = "columns-empty";
  const title = document.createElement("p");
  title.className = "columns-empty-title";
  title.textContent = "No model selected";
  const text = document.createElement("p");
  text.textContent = state.key.models.length
    ? "Choose one or more models in the settings to compare their answers side by side."
    : "This key's tier allows no models. Pick another key or ask an administrator.";
  note.append(title, text);
  return note;
}

function selectedColumns() {
  return state.selected.map((name) => state.columns.get(name)).filter(Boolean);
}


function readNumber(input, { integer }) {
  const raw = input.value.trim();
  if (raw === "") return { value: null, valid: input.validity.valid };
  const value = Number(raw);
  const valid = input.validity.valid && Number.isFinite(value) && (!integer || Number.isInteger(value));
  return { value: valid ? value : null, valid };
}

function readSettings() {
  const temperature = readNumber(ui.temperature, { integer: false });
  const maxTokens = readNumber(ui.maxTokens, { integer: true });
  ui.temperature.classList.toggle("is-invalid", !temperature.valid);
  ui.maxTokens.classList.toggle("is-invalid", !maxTokens.valid);
  return {
    system: ui.system.value.trim(),
    temperature: temperature.value,
    maxTokens: maxTokens.value,
    problem: !temperature.valid
      ? { input: ui.temperature, message: "Temperature must be a number from 0 to 2." }
      : !maxTokens.valid
        ? { input: ui.maxTokens, message: "Max tokens must be a whole number of at least 1." }
        : null,
  };
}

function syncTemperatureRange() {
  const { value, valid } = readNumber(ui.temperature, { integer: false });
  const unset = value == null;
  ui.temperatureRange.classList.toggle("is-unset", unset);
  if (!unset) ui.temperatureRange.value = String(value);
  ui.temperatureReset.hidden = ui.temperature.value === "";
  ui.temperature.classList.toggle("is-invalid", !valid);
}

function updateSummary() {
  const settings = readSettings();
  const parts = [];
  if (settings.system) parts.push("system prompt");
  if (settings.temperature != null) parts.push(`temp ${settings.temperature}`);
  if (settings.maxTokens != null) parts.push(`max ${settings.maxTokens} tokens`);
  parts.push(...composer.summaryParts());
  ui.settingsSummary.textContent = parts.length ? parts.join(" · ") : "Defaults";
}


function updateControls() {
  const running = Boolean(state.run);
  const input = ui.prompt.value.trim() || (!arena.on && composer.hasInput(selectedColumns()));
  ui.send.disabled = running || !input || (state.selected.length === 0 && !arena.on);
  arena.setRunning(running);
  composer.setRunning(running);
  for (const column of state.columns.values()) column.setIdle(!running);
  ui.stop.disabled = !running || state.run.stopping;
  ui.newChat.disabled = running;
  ui.keyPicker.disabled = running;
  ui.composer.classList.toggle("is-running", running);
  for (const button of ui.historyList.querySelectorAll("button")) button.disabled = running;
}

function autosizePrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 240)}px`;
}


/** `only`: the models to send to, when not every selected one (a turn of tool results, one model's snippet). */
function buildRequest(prompt, only = null) {
  const settings = readSettings();
  if (arena.on) return arena.request(prompt, settings, state.key.id);
  const models = only && only.length
    ? [...only]
    : state.selected.length ? [...state.selected] : state.key.models.slice(0, 1).map((m) => m.name);
  const images = composer.images();
  const messagesByModel = {};
  for (const name of models) {
    const column = state.columns.get(name);
    messagesByModel[name] = column
      ? column.messagesFor(prompt, settings.system, { images })
      : [
          ...(settings.system ? [{ role: "system", content: settings.system }] : []),
          { role: "user", content: prompt },
        ];
  }
  const columns = models.map((name) => state.columns.get(name)).filter(Boolean);
  return {
    keyId: state.key.id,
    models,
    messagesByModel,
    temperature: settings.temperature,
    maxTokens: settings.maxTokens,
    images,
    ...composer.requestFields(columns),
  };
}

function chatFrame(request) {
  if (request.arena) return arena.chatFrame(request, state.runId);
  const frame = {
    type: "chat",
    key_id: request.keyId,
    models: request.models,
    messages_by_model: request.messagesByModel,
  };
  if (request.temperature != null) frame.temperature = request.temperature;
  if (request.maxTokens != null) frame.max_tokens = request.maxTokens;
  Object.assign(frame, composer.frameFields(request));
  // The next turn of the open conversation; without it the server starts a new one.
  if (state.runId != null) frame.run_id = state.runId;
  return frame;
}

async function send() {
  if (state.run) return;
  const prompt = ui.prompt.value.trim();
  const picked = arena.on ? [] : selectedColumns();
  if (!(prompt || composer.hasInput(picked)) || (!state.selected.length && !arena.on)) return;
  const settings = readSettings();
  if (settings.problem) {
    showBanner(settings.problem.message);
    openSettings();
    settings.problem.input.focus();
    return;
  }
  // With an empty prompt, only the models whose tool calls have their results typed take a turn.
  const only = arena.on ? null : composer.models(prompt, picked);
  const problem = arena.on ? null : composer.problem(only.map((name) => state.columns.get(name)));
  if (problem) {
    showBanner(problem.message);
    if (problem.settings) openSettings();
    problem.focus();
    return;
  }
  const request = buildRequest(prompt, only);
  const frame = chatFrame(request);
  const tooBig = arena.on ? null : composer.frameProblem(frame);
  if (tooBig) {
    showBanner(tooBig);
    return;
  }
  hideBanner();

  const sentAt = performance.now();
  const columns = request.arena ? arena.columns : request.models.map((name) => state.columns.get(name));
  state.run = newRun({ models: request.models, columns, sentAt, prompt, started: false });
  state.run.images = request.images || [];
  state.lastRequest = request;
  for (const column of columns) column.beginTurn(prompt, sentAt, { images: state.run.images });
  if (!arena.on) composer.clearImages();
  ui.prompt.value = "";
  autosizePrompt();
  closeSettings();
  syncColumns();
  updateModelCap();
  setStatus(
    `Sending to ${request.models.length} model${request.models.length === 1 ? "" : "s"}…`,
    "busy",
  );

  try {
    await socket.send(frame);
    if (state.run && !state.run.started) setStatus("Waiting for the first token…", "busy");
  } catch (error) {
    rollbackRun(error.message);
  }
}

/** Run one model's last turn again, alone: its new answer replaces the old one, in the saved run too. */
async function regenerate(name) {
  const column = state.columns.get(name);
  if (state.run || arena.on || !column || !column.canRegenerate()) return;
  const settings = readSettings();
  const problem = settings.problem
    ? { message: settings.problem.message, focus: () => settings.problem.input.focus(), settings: true }
    : composer.settingsProblem([column]);
  if (problem) {
    showBanner(problem.message);
    if (problem.settings) openSettings();
    problem.focus();
    return;
  }
  const request = {
    keyId: state.key.id,
    models: [name],
    messagesByModel: { [name]: column.regenerateMessages(settings.system) },
    temperature: settings.temperature,
    maxTokens: settings.maxTokens,
    ...composer.requestFields([column]),
  };
  const frame = { ...chatFrame(request), regenerate: true };
  const tooBig = composer.frameProblem(frame);
  if (tooBig) {
    showBanner(tooBig);
    return;
  }
  hideBanner();
  const sentAt = performance.now();
  state.run = newRun({ models: [name], columns: [column], sentAt, prompt: "", started: false });
  column.beginRegenerate(sentAt);
  syncColumns();
  updateModelCap();
  setStatus(`Asking ${name} again…`, "busy");
  try {
    await socket.send(frame);
    if (state.run && !state.run.started) setStatus("Waiting for the first token…", "busy");
  } catch (error) {
    rollbackRun(error.message);
  }
}

/** The server refused the run before any model started: nothing happened, so undo it. */
function rollbackRun(message, code) {
  const run = state.run;
  if (!run) return;
  for (const column of run.columns) column.rollbackTurn();
  composer.restoreImages(run.images);
  if (!ui.prompt.value.trim()) {
    ui.prompt.value = run.prompt;
    autosizePrompt();
  }
  showBanner(message, code);
  endRun();
  setStatus(socket.state === "open" ? "Ready" : "Not connected. Connects again when you send.", socket.state === "open" ? "ok" : "error");
}

/** A run in flight: which columns it feeds, and the last frame seen (`seq`), to resume after. */
function newRun({ models, columns, sentAt, prompt, started, saved = false }) {
  return {
    models: new Set(models),
    columns,
    sentAt,
    prompt,
    started,
    // The server has saved the turn (its `saved` frame): from then on it can be resumed.
    saved,
    stopping: false,
    lastSeq: 0,
    resuming: false,
    reconnects: 0,
    reconnectTimer: null,
  };
}

function endRun() {
  if (state.run && state.run.reconnectTimer != null) clearTimeout(state.run.reconnectTimer);
  state.run = null;
  syncColumns();
  updateModelCap();
  updateControls();
}

function stop() {
  const run = state.run;
  if (!run || run.stopping) return;
  run.stopping = true;
  updateControls();
  if (socket.sendIfOpen({ type: "cancel" })) {
    setStatus("Stopping…", "busy");
  } else {
    abortRun("The connection closed before the answer finished.");
  }
}

function abortRun(message) {
  const run = state.run;
  if (!run) return;
  for (const column of run.columns) {
    if (column.running) column.fail({ message });
  }
  endRun();
}

function newChat() {
  if (state.run) return;
  for (const column of state.columns.values()) column.clear();
  arena.clear();
  state.lastRequest = null;
  setRunId(null);
  hideBanner();
  setStatus(socket.state === "open" ? "New chat" : "New chat. Connects when you send.", socket.state === "open" ? "ok" : "idle");
  ui.prompt.focus();
}


function onFrame(received) {
  // A battle's frames name a side, which the arena turns into its column's label.
  const frame = arena.receive(received);
  const run = state.run;
  const column = run && typeof frame.model === "string" && run.models.has(frame.model)
    ? run.columns.find((item) => item.model === frame.model) || null
    : null;
  if (run && typeof frame.seq === "number") {
    // A frame of the run's stream: after a resume the server may send again what the page already has.
    if (frame.seq <= run.lastSeq) return;
    run.lastSeq = frame.seq;
    run.resuming = false;
  }

  switch (frame.type) {
    case "ready":
      if (!run) setStatus("Connected", "ok");
      return;
    case "saved":
      if (Number.isInteger(frame.run_id)) {
        if (run) run.saved = true;
        setRunId(frame.run_id);
        refreshHistory();
      }
      return;
    case "resumed":
      if (run) {
        run.resuming = false;
        run.reconnects = 0;
        setRunProgress();
      }
      return;
    case "start":
      if (!column) return;
      run.started = true;
      column.start(frame);
      setRunProgress();
      return;
    case "chunk":
      if (column) {
        run.started = true;
        column.appendChunk(frame.content, frame);
      }
      return;
    case "reasoning":
      if (column) {
        run.started = true;
        column.appendReasoning(frame.content, frame);
      }
      return;
    case "tool_call":
      if (column) {
        run.started = true;
        column.appendToolCall(frame);
      }
      return;
    case "done":
      if (column && column.running) {
        column.finish(frame);
        setRunProgress();
      }
      return;
    case "error":
      if (frame.model != null) {
        if (column && column.running) {
          run.started = true;
          column.fail(frame);
          setRunProgress();
        }
      } else if (run && run.resuming) {
        resumeFailed(frame);
      } else if (run && !run.started) {
        // The conversation is gone (deleted in another tab, or past the history cap): the next send starts anew.
        if (frame.code === "run_not_found") setRunId(null);
        rollbackRun(frame.message, frame.code);
      } else if (frame.code !== "no_run") {
        // A Stop that crossed the end of the run gets "no_run" back: nothing worth showing.
        showBanner(frame.message, frame.code);
      }
      return;
    case "complete":
      if (run) completeRun(frame);
      return;
    default:
      return;
  }
}

function setRunProgress() {
  const run = state.run;
  if (!run || run.stopping || run.reconnectTimer != null) return;
  const finished = run.columns.filter((column) => !column.running).length;
  const total = run.columns.length;
  setStatus(finished ? `Streaming: ${finished} of ${total} finished` : `Streaming from ${total} model${total === 1 ? "" : "s"}…`, "busy");
}

function completeRun(frame) {
  const run = state.run;
  const results = (frame && frame.results) || {};
  for (const column of run.columns) {
    if (!column.running) continue;
    const result = results[column.model] || {};
    if (result.status === "done") column.finish(result);
    else if (result.status === "cancelled") column.fail({ code: "cancelled", status: 499 });
    else {
      const error = result.error || {};
      column.fail({ code: error.code || "error", status: error.status, message: error.message || "The model did not finish." });
    }
  }
  const elapsed = formatMs(performance.now() - run.sentAt);
  const states = run.columns.map((column) => column.state);
  endRun();
  refreshHistory();
  if (states.every((s) => s === "done")) setStatus(`Done in ${elapsed}`, "ok");
  else if (states.some((s) => s === "cancelled")) setStatus(`Stopped after ${elapsed}`, "idle");
  else if (states.every((s) => s === "error")) setStatus("The run failed", "error");
  else setStatus(`Finished with errors in ${elapsed}`, "error");
  if (document.activeElement === document.body) ui.prompt.focus();
}

function onSocketState(socketState, detail) {
  if (socketState === "connecting") {
    if (!state.run) setStatus("Connecting…", "busy");
  } else if (socketState === "open") {
    if (!state.run) setStatus("Connected", "ok");
  } else if (socketState === "closed") {
    const wasOpen = Boolean(detail && detail.wasOpen);
    if (detail && detail.code === CLOSE_UNAUTHENTICATED) {
      abortRun("The session ended before the answer finished.");
      setStatus("Signed out", "error");
      showBanner("Your session has ended.", null, { href: ui.workspace.dataset.loginUrl, text: "Sign in again" });
    } else if (state.run && state.run.saved && state.runId != null && !state.run.stopping) {
      // The turn goes on on the server: connect again and pick it up after the last frame seen.
      scheduleReconnect();
    } else if (!wasOpen) {
      // A run waiting for this socket was never sent; send() rolls it back.
      if (!state.run) setStatus("Not connected. Connects when you send.", "error");
    } else {
      abortRun("The connection closed before the answer finished.");
      setStatus("Disconnected. Connects again when you send.", "error");
    }
  }
}

const socket = new GatewaySocket(config.ws_path, { onFrame, onState: onSocketState });


/** Ask for the running turn's frames after the last one seen (all of them after a reload). */
async function sendResume() {
  const run = state.run;
  if (!run || state.runId == null) return;
  run.resuming = true;
  try {
    await socket.send({ type: "resume", run_id: state.runId, after: run.lastSeq });
  } catch {
    // The close handler has scheduled the next try.
  }
}

function scheduleReconnect() {
  const run = state.run;
  if (!run || run.reconnectTimer != null) return;
  const delay = RECONNECT_DELAYS_MS[run.reconnects];
  if (delay == null) {
    abortRun("The connection could not be restored before the answer finished. Reopen the run from History.");
    setStatus("Disconnected. Connects again when you send.", "error");
    refreshHistory();
    return;
  }
  run.reconnects += 1;
  setStatus("Connection lost. Reconnecting…", "busy");
  run.reconnectTimer = setTimeout(() => {
    run.reconnectTimer = null;
    if (state.run === run) sendResume();
  }, delay);
}

/** The turn cannot be followed from here (it ended meanwhile, or its stream is gone): show it as saved. */
function resumeFailed(frame) {
  const id = state.runId;
  endRun();
  openRun(id, { resume: false }).then(() => {
    if (frame.code !== "stream_ended") showBanner(frame.message, frame.code);
  });
}


function setRunId(id) {
  state.runId = id;
  try {
    if (id == null) sessionStorage.removeItem(RUN_STORAGE_KEY);
    else sessionStorage.setItem(RUN_STORAGE_KEY, String(id));
  } catch {
    // Storage disabled: the URL still holds it.
  }
  const url = new URL(window.location.href);
  if (id == null) url.searchParams.delete("run");
  else url.searchParams.set("run", String(id));
  url.searchParams.delete("log");
  window.history.replaceState(null, "", url);
  share.setRun(id);
  renderHistoryList();
}

async function refreshHistory() {
  try {
    state.runs = await fetchRuns(config.runs_url);
  } catch (error) {
    ui.historyNote.textContent = "Not loaded";
    ui.historyNote.title = error.message;
    return;
  }
  ui.historyNote.textContent = state.runs.length ? String(state.runs.length) : "";
  ui.historyNote.title = `${state.runs.length} saved run${state.runs.length === 1 ? "" : "s"}`;
  renderHistoryList();
}

function renderHistoryList() {
  renderHistory(ui.historyList, state.runs, {
    currentId: state.runId,
    disabled: Boolean(state.run),
    onOpen: (id) => openRun(id),
  });
}

/** A saved run from the server: its key, settings, columns and conversation; a turn still running resumes. */
async function openRun(id, { resume = true } = {}) {
  if (state.run) return;
  setStatus("Opening the saved run…", "busy");
  let saved;
  try {
    saved = await fetchRun(config.runs_url, id);
  } catch (error) {
    if (error.status === 404) setRunId(null);
    showBanner(error.message);
    setStatus("The saved run was not opened", "error");
    return;
  }
  if (state.run) return;
  hideBanner();
  restoreRun(saved, { resume });
}

function restoreRun(saved, { resume }) {
  const options = saved.options || {};
  const key = config.keys.find((item) => item.id === options.key_id) || state.key;
  const turns = Array.isArray(saved.turns) ? saved.turns : [];
  const last = turns[turns.length - 1];
  // The models of the last turn with a prompt: a turn of tool results alone went to some of them only.
  const prompted = [...turns].reverse().find((turn) => turn.prompt) || last;
  selectKey(key, saved.arena ? state.selected : prompted && Array.isArray(prompted.models) ? prompted.models : saved.models);
  ui.system.value = typeof options.system === "string" ? options.system : "";
  ui.temperature.value = options.temperature != null ? String(options.temperature) : "";
  ui.maxTokens.value = options.max_tokens != null ? String(options.max_tokens) : "";
  syncTemperatureRange();
  updateSummary();
  save();

  for (const column of state.columns.values()) column.clear();
  const running = resume && Boolean(saved.active_stream_id) && last && last.status === "running";
  const missing = new Set();
  // An arena run fills the arena's own two columns (and turns the toggle on); any other run turns it off.
  const battle = arena.restore(saved, { running });
  turns.forEach((turn, index) => {
    if (battle) return;
    // Begun by resumeTurn: the running turn's models (or the one model it runs again, the others as saved).
    const resumed = running && index === turns.length - 1 ? turn.rerun || turn.models || [] : [];
    for (const name of turn.models || []) {
      if (resumed.includes(name)) continue;
      const model = key.models.find((item) => item.name === name);
      if (!model) {
        missing.add(name);
        continue;
      }
      const answer = (turn.answers || {})[name] || { status: "interrupted" };
      if (answer.status === "running") {
        columnFor(model).restoreTurn(turn.prompt, {
          status: "error",
          error: { message: "This turn is still running and cannot be followed here. Reopen the run once it has finished." },
        });
      } else {
        columnFor(model).restoreTurn(turn.prompt, answer, { results: (turn.results || {})[name] });
      }
    }
  });
  state.lastRequest = null;
  setRunId(saved.id);
  syncColumns();
  if (missing.size) {
    showBanner(`${[...missing].join(", ")} ${missing.size === 1 ? "is" : "are"} not available to this key: those answers are not shown.`);
  }
  if (running) {
    resumeTurn(last);
  } else {
    setStatus(`Opened “${saved.title || "untitled run"}”`, "ok");
  }
}

/** The saved run's last turn is still streaming on the server: rebuild it from its first frame. */
function resumeTurn(turn) {
  const models = arena.on ? arena.labels : (turn.rerun || turn.models || []).filter((name) => state.selected.includes(name));
  const columns = arena.on ? arena.columns : models.map((name) => state.columns.get(name));
  let elapsed = Date.now() - Date.parse(turn.started_at);
  if (!Number.isFinite(elapsed) || elapsed < 0) elapsed = 0;
  const sentAt = performance.now() - elapsed;
  state.run = newRun({ models, columns, sentAt, prompt: turn.prompt, started: true, saved: true });
  for (const column of columns) column.beginTurn(turn.prompt, sentAt);
  syncColumns();
  updateModelCap();
  setStatus("Resuming the running turn…", "busy");
  sendResume();
}


/** `model`: one model's request (its column's copy buttons) instead of the comparison's. */
function snippetRequest(model = null) {
  const prompt = ui.prompt.value.trim();
  const only = model ? [model] : null;
  if (prompt) return { request: buildRequest(prompt, only), note: "The request the prompt box would send now." };
  if (state.lastRequest && (!model || state.lastRequest.models.includes(model))) {
    return { request: state.lastRequest, note: "The last request sent." };
  }
  return { request: buildRequest(EXAMPLE_PROMPT, only), note: "The prompt box is empty, so this uses an example message." };
}

async function showSnippet(kind, model = null) {
  const { request, note } = snippetRequest(model);
  const key = config.keys.find((item) => item.id === request.keyId) || state.key;
  const args = { apiBase: config.api_base, key, request, model };
  const text = kind === "curl" ? curlSnippet(args) : pythonSnippet(args);
  ui.snippetTitle.textContent = `${kind === "curl" ? "Copy as curl" : "Copy as Python"}${model ? ` · ${model}` : ""}`;
  ui.snippet.textContent = text;
  ui.snippetNote.textContent = note;
  if (!ui.dialog.open) ui.dialog.showModal();
  const copied = await copyText(text);
  ui.snippetNote.textContent = copied ? `${note} Copied to the clipboard.` : `${note} Select it below to copy.`;
}

async function copyText(text) {
  if (!navigator.clipboard || !window.isSecureContext) return false;
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}


/** A request from the request log (?log=<request id>): its model, system prompt, settings and conversation,
 * ready to continue, or to send again when it ended on an unanswered message. */
async function openLogged(requestId) {
  setStatus("Opening the logged request…", "busy");
  let logged;
  try {
    logged = await fetchLogged(requestId);
  } catch (error) {
    showBanner(error.message);
    setStatus("The logged request was not opened", "error");
    return;
  }
  if (state.run) return;
  const key = config.keys.find((item) => item.id === logged.api_key_id) || state.key;
  const allowed = key.models.some((model) => model.name === logged.model);
  selectKey(key, allowed ? [logged.model] : state.selected);
  ui.system.value = logged.system || "";
  ui.temperature.value = logged.temperature != null ? String(logged.temperature) : "";
  ui.maxTokens.value = logged.max_tokens != null ? String(logged.max_tokens) : "";
  syncTemperatureRange();
  updateSummary();
  const { turns, pending } = loggedTurns(logged.messages);
  setRunId(null);
  for (const column of selectedColumns()) {
    column.clear();
    for (const turn of turns) column.replayTurn(turn.prompt, turn.answer);
  }
  if (pending) {
    ui.prompt.value = pending;
    autosizePrompt();
  }
  updateControls();
  const notes = [];
  if (!allowed) notes.push(`${logged.model} is not available to this key, so the conversation went to the selected models.`);
  if (logged.truncated) notes.push("The log cut this request to fit its size cap: some texts end in a cut mark.");
  if (notes.length) showBanner(notes.join(" "));
  setStatus(`Opened logged request ${logged.request_id}`, "ok");
}


function openSettings() {
  ui.settingsPanel.classList.add("is-open");
  ui.settingsToggle.setAttribute("aria-expanded", "true");
}

function closeSettings() {
  ui.settingsPanel.classList.remove("is-open");
  ui.settingsToggle.setAttribute("aria-expanded", "false");
}


function init() {
  const saved = loadSaved();
  const savedKey = config.keys.find((key) => key.id === saved.keyId);
  ui.system.value = typeof saved.system === "string" ? saved.system : "";
  ui.temperature.value = typeof saved.temperature === "string" ? saved.temperature : "";
  ui.maxTokens.value = typeof saved.maxTokens === "string" ? saved.maxTokens : "";
  composer.restore(saved);
  const key = savedKey || config.keys[0];
  selectKey(key, (saved.modelsByKey || {})[key.id]);
  syncTemperatureRange();
  updateSummary();

  ui.keyPicker.addEventListener("change", () => {
    const key = config.keys.find((item) => String(item.id) === ui.keyPicker.value);
    if (!key || state.run) return;
    selectKey(key, (loadSaved().modelsByKey || {})[key.id]);
    save();
  });

  ui.temperatureRange.addEventListener("input", () => {
    ui.temperature.value = ui.temperatureRange.value;
    syncTemperatureRange();
    updateSummary();
  });
  ui.temperatureReset.addEventListener("click", () => {
    ui.temperature.value = "";
    syncTemperatureRange();
    updateSummary();
    save();
    ui.temperature.focus();
  });
  ui.temperature.addEventListener("input", () => {
    syncTemperatureRange();
    updateSummary();
  });
  for (const input of [ui.system, ui.temperature, ui.temperatureRange, ui.maxTokens]) {
    input.addEventListener("change", () => {
      updateSummary();
      save();
    });
  }
  ui.maxTokens.addEventListener("input", updateSummary);

  ui.settingsToggle.addEventListener("click", () => {
    if (ui.settingsPanel.classList.contains("is-open")) closeSettings();
    else openSettings();
  });

  ui.prompt.addEventListener("input", () => {
    autosizePrompt();
    updateControls();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!ui.send.disabled) send();
    } else if (event.key === "Escape" && state.run) {
      event.preventDefault();
      stop();
    }
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.bannerClose.addEventListener("click", hideBanner);
  ui.copyCurl.addEventListener("click", () => showSnippet("curl"));
  ui.copyPython.addEventListener("click", () => showSnippet("python"));
  ui.snippetClose.addEventListener("click", () => ui.dialog.close());
  ui.snippetCopy.addEventListener("click", async () => {
    const copied = await copyText(ui.snippet.textContent);
    if (copied) {
      ui.snippetNote.textContent = "Copied to the clipboard.";
    } else {
      getSelection().selectAllChildren(ui.snippet);
      ui.snippetNote.textContent = "Selected. Press Ctrl+C (or Cmd+C) to copy.";
    }
  });
  ui.dialog.addEventListener("click", (event) => {
    // A click on the backdrop lands on the dialog element itself.
    if (event.target === ui.dialog) ui.dialog.close();
  });

  updateControls();
  // Phones fold the History away, like the settings, so the columns come first.
  if (window.matchMedia("(max-width: 760px)").matches) ui.history.open = false;
  renderHistoryList();
  const params = new URLSearchParams(window.location.search);
  const logged = params.get("log");
  let stored = null;
  try {
    stored = sessionStorage.getItem(RUN_STORAGE_KEY);
  } catch {
    stored = null;
  }
  const current = params.get("run") || stored;
  if (logged) openLogged(logged);
  else if (current && /^[0-9]+$/.test(current)) openRun(Number(current));
  refreshHistory();
  socket.connect().catch(() => {
    // The state handler has already said so in the status line.
  });
}

init();
