// Function tools offered to every selected model: typed as JSON in the settings and checked here, so a typo gets a
// message that points at it instead of a provider's 400. The calls a model makes, and the results the user types
// for them, belong to that model's column (column.js).

// OpenAI's rule for function names; the other dialects accept these too.
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

export const EXAMPLE_TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", description: "The city's name" } },
        required: ["city"],
      },
    },
  },
];

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * The tools field as OpenAI function tools: one tool or an array of them, each in OpenAI's shape
 * ({"type": "function", "function": {...}}) or bare ({"name", "description", "parameters"}).
 * @returns {{tools: object[]} | {error: string}}
 */
export function parseTools(text) {
  const raw = (text || "").trim();
  if (!raw) return { tools: [] };
  let value;
  try {
    value = JSON.parse(raw);
  } catch (error) {
    return { error: `The tools are not valid JSON: ${error.message}.` };
  }
  const list = Array.isArray(value) ? value : [value];
  if (!list.length) return { tools: [] };
  const tools = [];
  const names = new Set();
  for (const [index, item] of list.entries()) {
    const where = list.length > 1 ? `Tool ${index + 1}` : "The tool";
    if (!isObject(item)) return { error: `${where} must be a JSON object.` };
    if (item.type != null && item.type !== "function") {
      return { error: `${where} has "type": ${JSON.stringify(item.type)}; only "function" tools can be defined here.` };
    }
    const definition = item.type === "function" || isObject(item.function) ? item.function : item;
    if (!isObject(definition)) return { error: `${where} needs a "function" object with its name and parameters.` };
    const { name, description, parameters } = definition;
    if (typeof name !== "string" || !NAME.test(name)) {
      return { error: `${where} needs a "name" of letters, digits, "_" or "-" (at most 64), got ${JSON.stringify(name ?? null)}.` };
    }
    if (names.has(name)) return { error: `Two tools are named "${name}".` };
    if (description != null && typeof description !== "string") {
      return { error: `The "description" of tool "${name}" must be a string.` };
    }
    if (parameters != null && !isObject(parameters)) {
      return { error: `The "parameters" of tool "${name}" must be a JSON Schema object.` };
    }
    names.add(name);
    const fn = { name };
    if (description) fn.description = description;
    fn.parameters = parameters || { type: "object", properties: {} };
    tools.push({ type: "function", function: fn });
  }
  return { tools };
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

/** The Tools field of the settings: a JSON text area, an example to start from, and the reason it is refused. */
export class ToolsEditor {
  constructor({ onChange }) {
    this.onChange = onChange;
    const field = element("div", "field tools-field");
    const row = element("div", "field-row");
    const label = element("label", "field-label", "Tools");
    label.htmlFor = "tools-json";
    this.exampleButton = element("button", "link-button", "Add an example");
    this.exampleButton.type = "button";
    this.exampleButton.addEventListener("click", () => {
      this.textarea.value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
      this.check();
      this.onChange();
    });
    row.append(label, this.exampleButton);
    this.textarea = element("textarea", "tools-json");
    this.textarea.id = "tools-json";
    this.textarea.rows = 4;
    this.textarea.spellcheck = false;
    this.textarea.dataset.testid = "tools-json";
    this.textarea.placeholder = '[{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]';
    this.textarea.setAttribute("aria-describedby", "tools-hint tools-error");
    this.textarea.addEventListener("input", () => {
      if (!this.error.hidden) this.check();
    });
    this.textarea.addEventListener("change", () => {
      this.check();
      this.onChange();
    });
    this.error = element("p", "field-error");
    this.error.id = "tools-error";
    this.error.dataset.testid = "tools-error";
    this.error.setAttribute("role", "alert");
    this.error.hidden = true;
    const hint = element(
      "p",
      "field-hint",
      "Function tools, as JSON, offered to every selected model. A call a model makes shows in its column, where you type the result to send back.",
    );
    hint.id = "tools-hint";
    field.append(row, this.textarea, this.error, hint);
    this.element = field;
  }

  get value() {
    return this.textarea.value;
  }

  set value(text) {
    this.textarea.value = text || "";
    this.check();
  }

  /** The tools to send, or the reason they cannot be (also shown under the field). */
  read() {
    const parsed = parseTools(this.textarea.value);
    this.showError(parsed.error);
    return parsed;
  }

  check() {
    return this.read();
  }

  showError(message) {
    this.error.textContent = message || "";
    this.error.hidden = !message;
    this.textarea.classList.toggle("is-invalid", Boolean(message));
    this.textarea.setAttribute("aria-invalid", message ? "true" : "false");
  }

  focus() {
    this.textarea.focus();
  }
}
