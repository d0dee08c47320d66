// Sampling parameters: the ones every model shares (the settings) and a model's own (its column's panel, "Same as
// all models" until unticked). A model's own values go in the compare request's `params_by_model`, over the shared
// ones: a field left empty there keeps the shared value. Values are checked here as the gateway checks them.

let nextId = 0;

// Each field: its request name, label, input kind, and the checks the gateway applies.
const FIELDS = {
  temperature: { label: "Temperature", kind: "number", min: 0, max: 2, hint: "0 to 2" },
  top_p: { label: "Top p", kind: "number", min: 0, max: 1, hint: "0 to 1" },
  max_tokens: { label: "Max tokens", kind: "integer", min: 1, hint: "at least 1" },
  seed: { label: "Seed", kind: "integer", hint: "an integer, for repeatable samples where the provider supports it" },
  stop: { label: "Stop sequences", kind: "stop", hint: "one per line, up to 4" },
  response_format: { label: "Response format", kind: "format" },
};
const STOP_MAX = 4;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A JSON schema for response_format: {"name", "schema", "strict"?} as OpenAI takes it, or a bare schema. */
export function parseSchema(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { error: `The JSON schema is not valid JSON: ${error.message}.` };
  }
  if (!isObject(value)) return { error: "The JSON schema must be a JSON object." };
  if (isObject(value.schema)) {
    const name = typeof value.name === "string" && /^[A-Za-z0-9_-]{1,64}$/.test(value.name) ? value.name : "output";
    const spec = { name, schema: value.schema };
    if (typeof value.strict === "boolean") spec.strict = value.strict;
    return { value: spec };
  }
  return { value: { name: "output", schema: value } };
}

/**
 * A form of some of FIELDS. `read()` gives the values set (empty fields left out) or the first problem; `set()`
 * fills it back in.
 */
export class ParamsForm {
  /** @param {{fields: string[], testid: string}} options */
  constructor({ fields, testid, onChange }) {
    this.inputs = {};
    this.onChange = onChange || (() => {});
    const form = element("div", "params-form");
    form.dataset.testid = testid;
    for (const name of fields) form.append(this.field(name, testid));
    this.element = form;
  }

  field(name, testid) {
    const spec = FIELDS[name];
    const id = `param-${name}-${(nextId += 1)}`;
    const wrap = element("div", `param param-${name.replace("_", "-")}`);
    const label = element("label", "param-label", spec.label);
    label.htmlFor = id;
    wrap.append(label);
    let input;
    if (spec.kind === "stop") {
      input = element("textarea", "param-input");
      input.rows = 2;
      input.placeholder = "None";
    } else if (spec.kind === "format") {
      input = element("select", "param-input");
      for (const [value, text] of [["", "Default (text)"], ["json_object", "JSON object"], ["json_schema", "JSON schema"]]) {
        const option = element("option", null, text);
        option.value = value;
        input.append(option);
      }
      const schema = element("textarea", "param-input param-schema");
      schema.rows = 4;
      schema.spellcheck = false;
      schema.placeholder = '{"name": "answer", "schema": {"type": "object", "properties": {...}}}';
      schema.setAttribute("aria-label", `${spec.label}: JSON schema`);
      schema.dataset.testid = `${testid}-schema`;
      schema.hidden = true;
      input.addEventListener("change", () => {
        schema.hidden = input.value !== "json_schema";
      });
      schema.addEventListener("change", () => this.onChange());
      this.schema = schema;
    } else {
      input = element("input", "param-input");
      input.type = "number";
      input.step = spec.kind === "integer" ? "1" : "any";
      input.inputMode = spec.kind === "integer" ? "numeric" : "decimal";
      if (spec.min != null) input.min = String(spec.min);
      if (spec.max != null) input.max = String(spec.max);
      input.placeholder = "Default";
    }
    input.id = id;
    input.dataset.testid = `${testid}-${name.replace("_", "-")}`;
    if (spec.hint) input.title = spec.hint;
    input.addEventListener("change", () => this.onChange());
    wrap.append(input);
    if (spec.kind === "format") wrap.append(this.schema);
    this.inputs[name] = input;
    return wrap;
  }

  setDisabled(disabled) {
    for (const input of Object.values(this.inputs)) input.disabled = disabled;
    if (this.schema) this.schema.disabled = disabled;
  }

  /** @returns {{values: object, problem: ?{input: HTMLElement, message: string}}} */
  read() {
    const values = {};
    let problem = null;
    const fail = (input, message) => {
      input.classList.add("is-invalid");
      problem = problem || { input, message };
    };
    if (this.schema) this.schema.classList.remove("is-invalid");
    for (const [name, input] of Object.entries(this.inputs)) {
      const spec = FIELDS[name];
      input.classList.remove("is-invalid");
      const raw = input.value.trim();
      if (!raw) continue;
      if (spec.kind === "number" || spec.kind === "integer") {
        const value = Number(raw);
        const integer = spec.kind === "integer";
        if (
          !input.validity.valid ||
          !Number.isFinite(value) ||
          (integer && !Number.isInteger(value)) ||
          (spec.min != null && value < spec.min) ||
          (spec.max != null && value > spec.max)
        ) {
          fail(input, `${spec.label} must be ${integer ? "a whole number" : "a number"}${spec.hint ? ` (${spec.hint})` : ""}.`);
        } else {
          values[name] = value;
        }
      } else if (spec.kind === "stop") {
        const stops = input.value.split("\n").filter((line) => line !== "");
        if (stops.length > STOP_MAX) fail(input, `At most ${STOP_MAX} stop sequences, one per line.`);
        else if (stops.length) values.stop = stops;
      } else if (spec.kind === "format") {
        if (raw === "json_object") {
          values.response_format = { type: "json_object" };
        } else if (raw === "json_schema") {
          const parsed = parseSchema(this.schema.value.trim() || "null");
          if (parsed.error) fail(this.schema, parsed.error);
          else values.response_format = { type: "json_schema", json_schema: parsed.value };
        }
      }
    }
    return { values, problem };
  }

  /** Fill the form in from request values (as read() gives them). */
  set(values) {
    for (const [name, input] of Object.entries(this.inputs)) {
      const value = (values || {})[name];
      if (FIELDS[name].kind === "stop") input.value = Array.isArray(value) ? value.join("\n") : "";
      else if (FIELDS[name].kind === "format") {
        input.value = value && value.type ? value.type : "";
        this.schema.hidden = input.value !== "json_schema";
        this.schema.value = value && value.json_schema ? JSON.stringify(value.json_schema, null, 2) : "";
      } else input.value = value != null ? String(value) : "";
    }
  }
}

/** The shared parameters the settings did not have yet: they go to every model. */
export function sharedParamsField({ onChange }) {
  const details = element("details", "field params-more");
  details.dataset.testid = "shared-params";
  const summary = element("summary", "field-label params-more-summary", "More parameters");
  const form = new ParamsForm({ fields: ["top_p", "seed", "stop", "response_format"], testid: "shared-param", onChange });
  const hint = element("p", "field-hint", "For every model, unless its column sets its own.");
  details.append(summary, form.element, hint);
  return { element: details, form };
}

/** A column's own parameters: "Same as all models" (the default), or its own values over the shared ones. */
export class ModelParams {
  constructor(model, { onChange } = {}) {
    this.model = model;
    this.onChange = onChange || (() => {});
    const panel = element("div", "column-params");
    panel.dataset.testid = "column-params";
    panel.hidden = true;
    const same = element("label", "params-same");
    this.sameInput = element("input");
    this.sameInput.type = "checkbox";
    this.sameInput.checked = true;
    this.sameInput.dataset.testid = "params-same";
    this.sameInput.addEventListener("change", () => {
      this.form.setDisabled(this.sameInput.checked);
      this.onChange();
    });
    same.append(this.sameInput, element("span", null, "Same as all models"));
    this.form = new ParamsForm({
      fields: ["temperature", "top_p", "max_tokens", "seed", "stop", "response_format"],
      testid: "model-param",
      onChange: () => this.onChange(),
    });
    this.form.setDisabled(true);
    const hint = element("p", "field-hint", `Only ${model} gets these. An empty field keeps the shared setting.`);
    panel.append(same, this.form.element, hint);
    this.element = panel;
  }

  get own() {
    return !this.sameInput.checked;
  }

  /** This model's own values ({} when it uses the shared ones), or the problem with them. */
  read() {
    if (!this.own) return { values: {}, problem: null };
    const read = this.form.read();
    if (read.problem) read.problem.message = `${this.model}: ${read.problem.message}`;
    return read;
  }

  /** A short description for the column head ("temp 0.2 · seed 7"), empty when shared. */
  summary() {
    if (!this.own) return "";
    const { values } = this.form.read();
    const parts = [];
    if (values.temperature != null) parts.push(`temp ${values.temperature}`);
    if (values.top_p != null) parts.push(`top p ${values.top_p}`);
    if (values.max_tokens != null) parts.push(`max ${values.max_tokens}`);
    if (values.seed != null) parts.push(`seed ${values.seed}`);
    if (values.stop) parts.push("stop");
    if (values.response_format) parts.push(values.response_format.type === "json_object" ? "JSON" : "schema");
    return parts.length ? parts.join(" · ") : "own settings";
  }
}
