// The playground's saved runs: the History list (most recently used first) and the JSON endpoints behind it
// (/playground/runs/ and /playground/runs/<id>/, the logged-in user's own runs only). The server saves every
// run as it goes; the page only reads them back.

const sameDay = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const otherDay = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

async function getJson(url, what) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch {
    throw new Error(`${what} could not be loaded: the gateway did not answer.`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok || !body) {
    const message = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
    const error = new Error(message || `${what} could not be loaded (HTTP ${response.status}).`);
    error.status = response.status;
    throw error;
  }
  return body;
}

/** The user's saved runs, without their turns. */
export async function fetchRuns(url) {
  const body = await getJson(url, "The history");
  return Array.isArray(body.runs) ? body.runs : [];
}

/** One saved run with all its turns. */
export async function fetchRun(url, id) {
  return getJson(`${url}${encodeURIComponent(id)}/`, "The saved run");
}

function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toDateString() === new Date().toDateString() ? sameDay.format(date) : otherDay.format(date);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/**
 * Draw the list: one button per run, its title (the first prompt), its models and when it last ran.
 * @param {HTMLElement} list
 * @param {Array<{id: number, title: string, models: string[], running: boolean, updated_at: string}>} runs
 * @param {{currentId: ?number, disabled: boolean, onOpen: (id: number) => void}} options
 */
export function renderHistory(list, runs, { currentId, disabled, onOpen }) {
  list.replaceChildren();
  if (!runs.length) {
    list.append(element("li", "history-empty", "Runs you send are kept here."));
    return;
  }
  for (const run of runs) {
    const item = element("li", "history-row");
    const button = element("button", "history-item");
    button.type = "button";
    button.dataset.testid = "history-item";
    button.dataset.runId = String(run.id);
    button.disabled = disabled;
    if (run.id === currentId) button.setAttribute("aria-current", "true");
    const title = element("span", "history-title", run.title || "Untitled run");
    title.title = run.title || "";
    const meta = element("span", "history-meta");
    const models = element("span", "history-models", (run.models || []).join(", "));
    const time = element("time", "history-time", when(run.updated_at));
    time.dateTime = run.updated_at;
    time.title = fullTime.format(new Date(run.updated_at));
    meta.append(models, time);
    button.append(title, meta);
    if (run.running) {
      const badge = element("span", "history-running", "running");
      badge.title = "A turn of this run is still streaming";
      button.append(badge);
    }
    button.addEventListener("click", () => onOpen(run.id));
    item.append(button);
    list.append(item);
  }
}
