// Row editors of the provider and model admin forms (providers/admin_widgets.py): add, remove and move
// rows, show the inputs a transform's op takes, and check each row as it is typed. The server checks
// again on save and has the last word; these checks are a subset of its own, so they never refuse what
// it would accept. Messages reach the page through textContent only.

const NAME_PATTERN_CHARS = /[*?[]/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e]*$/;
const NUMBER = /^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;
const NEEDS = { path: "a field", to: "a 'to' field", max: "a number 'max'", name: "a header name", value: "a JSON value" };

function rowsOf(widget) {
  return [...widget.querySelector("[data-rows]").children];
}

function inputOf(row, key) {
  return row.querySelector(`[data-input="${key}"]`);
}

function isBlank(row) {
  return [...row.querySelectorAll("[data-input]")].every((input) => input.value.trim() === "");
}

function showMessages(row, messages) {
  const list = row.querySelector("[data-row-errors]");
  list.replaceChildren(
    ...messages.map((message) => {
      const item = document.createElement("li");
      item.textContent = message;
      return item;
    }),
  );
  row.classList.toggle("gw-row-invalid", messages.length > 0);
  for (const input of row.querySelectorAll("[data-input]")) {
    if (messages.length > 0) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

// Names: aliases (patterns allowed) and fallbacks (model names only).

function nameProblems(widget, row, seen) {
  const name = inputOf(row, "item").value.trim();
  if (!name) return [];
  const noun = widget.dataset.noun;
  const problems = [];
  if (widget.dataset.patterns === "false" && NAME_PATTERN_CHARS.test(name)) {
    problems.push(`'${name}' is a pattern; only a model name can go here`);
  } else if (seen.has(name)) {
    problems.push(`'${name}' is listed twice`);
  }
  const ownName = document.getElementById("id_name");
  if (ownName && ownName.value.trim() === name) {
    problems.push(`a ${noun} must not name the model itself`);
  }
  seen.add(name);
  return problems;
}

// Transforms: one op per row, each taking its own inputs.

function pathProblem(key, text, gatewayFields) {
  if (text.split(".").some((part) => part === "")) return `'${key}' '${text}' has an empty field name (check the dots)`;
  if (gatewayFields.includes(text.split(".")[0])) return `'${key}' '${text}' is set by the gateway`;
  return null;
}

function transformProblems(widget, row) {
  if (isBlank(row)) return [];
  const opKeys = JSON.parse(widget.dataset.opKeys);
  const gatewayHeaders = JSON.parse(widget.dataset.gatewayHeaders);
  const gatewayFields = JSON.parse(widget.dataset.gatewayFields);
  const op = inputOf(row, "op").value;
  if (!op) return ["choose an op"];
  const takes = opKeys[op] || [];
  const problems = [];
  for (const key of takes) {
    const raw = inputOf(row, key).value;
    const text = raw.trim();
    if (key === "value" && op === "header") {
      if (!HEADER_VALUE.test(text)) problems.push("the header value must be printable ASCII on one line");
      continue;
    }
    if (!text) {
      problems.push(`'${op}' needs ${NEEDS[key]}`);
      continue;
    }
    if (key === "path" || key === "to") {
      const problem = pathProblem(key === "path" ? "field" : "to field", text, gatewayFields);
      if (problem) problems.push(problem);
      if (key === "to" && text === inputOf(row, "path").value.trim()) problems.push("'to field' must differ from 'field'");
    } else if (key === "max" && !NUMBER.test(text)) {
      problems.push(`'max' must be a number, not '${text}'`);
    } else if (key === "value") {
      try {
        JSON.parse(raw);
      } catch {
        problems.push("'value' is not JSON (write text in double quotes, e.g. \"auto\")");
      }
    } else if (key === "name") {
      if (!HEADER_NAME.test(text)) problems.push(`'${text}' is not a valid header name`);
      else if (gatewayHeaders.includes(text.toLowerCase())) problems.push(`header '${text}' is set by the gateway`);
    }
  }
  return problems;
}

function showOpInputs(widget, row) {
  const opKeys = JSON.parse(widget.dataset.opKeys);
  const op = inputOf(row, "op").value;
  const takes = op ? opKeys[op] || [] : [];
  for (const cell of row.querySelectorAll("[data-cell]")) {
    cell.hidden = !takes.includes(cell.dataset.cell);
  }
  const label = row.querySelector("[data-value-label]");
  const value = inputOf(row, "value");
  if (op === "header") {
    label.textContent = "value";
    value.placeholder = "e.g. https://example.com";
  } else {
    label.textContent = "value (JSON)";
    value.placeholder = 'e.g. 0.7, true, "text", {"a": 1}';
  }
}

// One widget.

function check(widget) {
  const seen = new Set();
  let invalid = 0;
  let number = 0;
  for (const row of rowsOf(widget)) {
    const problems =
      widget.dataset.rowsWidget === "names" ? nameProblems(widget, row, seen) : transformProblems(widget, row);
    if (!isBlank(row)) number += 1;
    showMessages(
      row,
      problems.map((problem) => `${widget.dataset.noun} ${number}: ${problem}`),
    );
    if (problems.length > 0) invalid += 1;
  }
  return invalid;
}

function prepareRow(widget, row) {
  row.querySelector("[data-row-buttons]").hidden = false;
  if (widget.dataset.rowsWidget === "transforms") showOpInputs(widget, row);
}

function addRow(widget) {
  const template = widget.querySelector("template[data-row-template]");
  const row = template.content.firstElementChild.cloneNode(true);
  widget.querySelector("[data-rows]").append(row);
  prepareRow(widget, row);
  row.querySelector("[data-input]").focus();
  return row;
}

function setUp(widget) {
  const list = widget.querySelector("[data-rows]");
  if (!list) return; // shown as JSON: nothing to enhance
  // With buttons to add rows, the blank rows kept for forms without JavaScript are not needed.
  for (const row of list.querySelectorAll("[data-row-extra]")) row.remove();
  for (const row of rowsOf(widget)) prepareRow(widget, row);
  const add = widget.querySelector("[data-row-add]");
  add.hidden = false;
  widget.querySelector("[data-rows-nojs]").hidden = true;
  let touched = false;

  add.addEventListener("click", () => {
    addRow(widget);
  });
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const row = button.closest("[data-row]");
    if (button.hasAttribute("data-row-remove")) row.remove();
    else if (button.hasAttribute("data-row-up") && row.previousElementSibling) row.after(row.previousElementSibling);
    else if (button.hasAttribute("data-row-down") && row.nextElementSibling) row.before(row.nextElementSibling);
    else return;
    if (touched) check(widget);
  });
  list.addEventListener("change", (event) => {
    const row = event.target.closest("[data-row]");
    if (event.target.dataset.input === "op") showOpInputs(widget, row);
    touched = true;
    check(widget);
  });
  list.addEventListener("input", () => {
    if (touched) check(widget);
  });

  const form = widget.closest("form");
  form.addEventListener("submit", (event) => {
    touched = true;
    if (check(widget) > 0) {
      event.preventDefault();
      event.stopImmediatePropagation();
      widget.querySelector(".gw-row-invalid [data-input]")?.focus();
    }
  });
}

for (const widget of document.querySelectorAll("[data-rows-widget]")) setUp(widget);
