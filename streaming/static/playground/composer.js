// What goes with a prompt besides its text: the tools offered to the models, the parameters every model shares
// beyond temperature and max tokens, each model's own parameters (its column's), an image for vision models, and
// the results typed for the tool calls of the last answers. The page (playground.js) asks it what to add to a chat
// frame and whether the frame can go; it checks everything first, so a mistake gets a message that says where.

import { formatBytes } from "./format.js";
import { ImagePicker } from "./images.js";
import { sharedParamsField } from "./params.js";
import { ToolsEditor } from "./tools.js";

export class Composer {
  /**
   * @param {{settingsPanel: HTMLElement, form: HTMLElement, prompt: HTMLTextAreaElement, actions: HTMLElement,
   *          maxFrameBytes: ?number, onChange: () => void, onError: (message: string) => void}} options
   */
  constructor({ settingsPanel, form, prompt, actions, maxFrameBytes, onChange, onError }) {
    this.maxFrameBytes = maxFrameBytes || null;
    this.tools = new ToolsEditor({ onChange });
    this.shared = sharedParamsField({ onChange });
    settingsPanel.append(this.tools.element, this.shared.element);
    this.image = new ImagePicker({ composer: form, prompt, actions, onChange, onError });
  }

  /** The selected models changed: the image is offered only if they all read images. */
  setModels(models) {
    this.image.update(models);
  }

  setRunning(running) {
    this.image.setDisabled(running);
  }

  /** The images to send with the next prompt. */
  images() {
    return this.image.image ? [this.image.image] : [];
  }

  /** The image went with a run: cleared from the composer (given back by restoreImages if the run is refused). */
  clearImages() {
    this.image.take();
  }

  restoreImages(images) {
    if (images && images.length) this.image.restore(images[0]);
  }

  /** Whether there is something to send besides a prompt: an image, or results for waiting tool calls. */
  hasInput(columns) {
    return Boolean(this.image.image) || columns.some((column) => column.toolResultsReady());
  }

  /**
   * The models a send goes to: all selected ones with a prompt or an image, else those whose tool calls have their
   * results (a turn of tool results alone).
   */
  models(prompt, columns) {
    if (prompt || this.image.image) return columns.map((column) => column.model);
    return columns.filter((column) => column.toolResultsReady()).map((column) => column.model);
  }

  /** Why the request cannot go as it is ({message, focus}), or null. */
  problem(columns) {
    const settings = this.settingsProblem(columns);
    if (settings) return settings;
    const image = this.image.problem();
    if (image) return { message: image, focus: () => this.image.button.focus() };
    for (const column of columns) {
      const missing = column.missingResult();
      if (missing) {
        return {
          message: `${column.model} called ${missing.name || "a tool"}: type its result in that column to send it back (or start a new chat).`,
          focus: () => missing.resultInput.focus(),
        };
      }
    }
    return null;
  }

  /** What is wrong with the tools or the parameters of `columns`' models, or null. */
  settingsProblem(columns) {
    const tools = this.tools.read();
    if (tools.error) {
      return { message: tools.error, focus: () => this.tools.focus(), settings: true };
    }
    const shared = this.shared.form.read();
    if (shared.problem) {
      this.shared.element.open = true;
      return { message: shared.problem.message, focus: () => shared.problem.input.focus(), settings: true };
    }
    for (const column of columns) {
      const own = column.ownParams();
      if (own.problem) {
        column.params.element.hidden = false;
        return { message: own.problem.message, focus: () => own.problem.input.focus() };
      }
    }
    return null;
  }

  /** Request fields for snippets and frames: shared extras, tools, and each model's own parameters. */
  requestFields(columns) {
    const tools = this.tools.read();
    const paramsByModel = {};
    for (const column of columns) {
      const own = column.ownParams();
      if (!own.problem && Object.keys(own.values).length) paramsByModel[column.model] = own.values;
    }
    return {
      params: this.shared.form.read().values,
      tools: tools.error ? [] : tools.tools,
      paramsByModel,
    };
  }

  /** The request's extras as chat frame fields. */
  frameFields(request) {
    const fields = { ...(request.params || {}) };
    if (request.tools && request.tools.length) fields.tools = request.tools;
    const own = request.paramsByModel || {};
    const byModel = Object.fromEntries(request.models.filter((name) => own[name]).map((name) => [name, own[name]]));
    if (Object.keys(byModel).length) fields.params_by_model = byModel;
    return fields;
  }

  /** A frame over the gateway's size limit gets this message instead of the gateway's refusal. */
  frameProblem(frame) {
    if (!this.maxFrameBytes) return null;
    const size = new Blob([JSON.stringify(frame)]).size;
    if (size <= this.maxFrameBytes) return null;
    const images = JSON.stringify(frame).includes('"image_url"');
    return (
      `This message is ${formatBytes(size)}, over the gateway's limit of ${formatBytes(this.maxFrameBytes)}` +
      (images ? ": the images of the conversation go to each model with every turn. Remove the image, compare fewer models, or start a new chat." : ".")
    );
  }

  /** Parts for the settings summary ("2 tools", "top p 0.9"). */
  summaryParts() {
    const parts = [];
    const tools = this.tools.read();
    if (tools.tools && tools.tools.length) parts.push(`${tools.tools.length} tool${tools.tools.length === 1 ? "" : "s"}`);
    const values = this.shared.form.read().values;
    if (values.top_p != null) parts.push(`top p ${values.top_p}`);
    if (values.seed != null) parts.push(`seed ${values.seed}`);
    if (values.stop) parts.push("stop");
    if (values.response_format) parts.push(values.response_format.type === "json_object" ? "JSON" : "schema");
    return parts;
  }

  /** What is kept with the page's settings, and put back from them. */
  saved() {
    return { tools: this.tools.value, params: this.shared.form.read().values };
  }

  restore(saved) {
    if (typeof saved.tools === "string") this.tools.value = saved.tools;
    if (saved.params && typeof saved.params === "object") this.shared.form.set(saved.params);
  }
}
