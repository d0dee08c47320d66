// An image sent with the prompt, for vision models: picked from a file or pasted into the prompt, shrunk in the
// browser when it is large, and sent as a data URL image part in the OpenAI chat format. It is offered only when
// every selected model reads images (kind "vision"): a model that does not would refuse it or ignore it.

import { formatBytes } from "./format.js";

// An image is sent inside the websocket frame, once per model, in every later turn of the conversation too: this
// keeps a few of them under the gateway's frame limit.
export const IMAGE_MAX_BYTES = 1024 * 1024;
// Larger images are scaled down to this many pixels on their long side first (what vision models read anyway).
const MAX_SIDE = 2048;
// A file this large is not read at all.
const READ_MAX_BYTES = 40 * 1024 * 1024;
const TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif"];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function dataUrlOf(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("The image could not be read."));
    reader.readAsDataURL(blob);
  });
}

/** Bytes of the data a data URL carries. */
export function dataUrlBytes(url) {
  const comma = url.indexOf(",");
  const payload = url.length - comma - 1;
  return Math.floor((payload * 3) / 4);
}

async function shrink(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${file.name || "The image"} could not be decoded as an image.`);
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  if (scale === 1 && file.size <= IMAGE_MAX_BYTES) {
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return { blob: file, ...size };
  }
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const type = file.type === "image/png" && file.size <= IMAGE_MAX_BYTES * 2 ? "image/png" : "image/jpeg";
  let blob = await new Promise((resolve) => canvas.toBlob(resolve, type, 0.85));
  if (blob && blob.size > IMAGE_MAX_BYTES && type === "image/png") {
    blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.85));
  }
  if (!blob) throw new Error("The image could not be re-encoded.");
  return { blob, width, height, resized: true };
}

/** The image a file holds, ready to send, or an Error whose message says why it cannot be. */
export async function readImage(file) {
  const name = file.name || "The pasted image";
  if (!TYPES.includes(file.type)) {
    throw new Error(`${name} is not a PNG, JPEG, WebP or GIF image.`);
  }
  if (file.size > READ_MAX_BYTES) {
    throw new Error(`${name} is ${formatBytes(file.size)}; images up to ${formatBytes(READ_MAX_BYTES)} can be attached.`);
  }
  const { blob, width, height, resized } = await shrink(file);
  if (blob.size > IMAGE_MAX_BYTES) {
    throw new Error(
      `${name} is ${formatBytes(blob.size)} even at ${width}×${height}; the limit is ${formatBytes(IMAGE_MAX_BYTES)}. ` +
        "Try a smaller or simpler image.",
    );
  }
  const url = await dataUrlOf(blob);
  return { url, name, bytes: blob.size, width, height, resized: Boolean(resized) };
}

/** A user message's content: plain text, or text and image parts when images go with it. */
export function userContent(prompt, images) {
  if (!images || !images.length) return prompt;
  const parts = [];
  if (prompt) parts.push({ type: "text", text: prompt });
  for (const image of images) parts.push({ type: "image_url", image_url: { url: image.url } });
  return parts;
}

/**
 * The composer's image: an "Image" button, a file picker, paste into the prompt, and a preview with a remove
 * button. `update(models)` enables it for the selected models.
 */
export class ImagePicker {
  constructor({ composer, prompt, actions, onChange, onError }) {
    this.onChange = onChange;
    this.onError = onError;
    this.image = null;
    this.visionOnly = true;
    this.blocked = [];
    this.noneSelected = false;

    this.input = element("input", "visually-hidden");
    this.input.type = "file";
    this.input.accept = TYPES.join(",");
    this.input.tabIndex = -1;
    this.input.dataset.testid = "image-input";
    this.input.setAttribute("aria-hidden", "true");
    this.input.addEventListener("change", () => {
      const [file] = this.input.files;
      this.input.value = "";
      if (file) this.attach(file);
    });

    this.button = element("button", "button button-quiet attach-image", "Image");
    this.button.type = "button";
    this.button.dataset.testid = "attach-image";
    this.button.addEventListener("click", () => this.input.click());

    this.preview = element("div", "image-preview");
    this.preview.dataset.testid = "image-preview";
    this.preview.hidden = true;
    this.note = element("p", "image-note");
    this.note.dataset.testid = "image-note";
    this.note.setAttribute("aria-live", "polite");
    this.note.hidden = true;

    prompt.addEventListener("paste", (event) => {
      const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
      if (!file) return;
      event.preventDefault();
      if (this.button.disabled) {
        this.onError(this.button.title);
        return;
      }
      this.attach(file);
    });

    composer.prepend(this.preview);
    composer.append(this.note);
    actions.prepend(this.input, this.button);
  }

  async attach(file) {
    try {
      this.image = await readImage(file);
    } catch (error) {
      this.onError(error.message);
      return;
    }
    this.render();
    this.onChange();
  }

  remove() {
    this.image = null;
    this.render();
    this.onChange();
  }

  /** The image to send with the next turn (kept until the turn is accepted: see restore). */
  take() {
    const image = this.image;
    this.image = null;
    this.render();
    return image;
  }

  restore(image) {
    if (!image || this.image) return;
    this.image = image;
    this.render();
  }

  render() {
    this.preview.replaceChildren();
    this.preview.hidden = !this.image;
    if (this.image) {
      const thumb = element("img", "image-thumb");
      thumb.src = this.image.url;
      thumb.alt = "";
      const text = element("span", "image-name", this.image.name);
      const size = element(
        "span",
        "image-size",
        `${this.image.width}×${this.image.height} · ${formatBytes(this.image.bytes)}${this.image.resized ? " (shrunk)" : ""}`,
      );
      const info = element("span", "image-info");
      info.append(text, size);
      const remove = element("button", "icon-button image-remove");
      remove.type = "button";
      remove.dataset.testid = "image-remove";
      remove.setAttribute("aria-label", "Remove the image");
      remove.title = "Remove the image";
      remove.addEventListener("click", () => this.remove());
      this.preview.append(thumb, info, remove);
    }
    this.renderNote();
  }

  /** Offered only when every selected model reads images; says which do not. */
  update(models) {
    this.blocked = models.filter((model) => !(model.kinds || []).includes("vision")).map((model) => model.name);
    const none = models.length === 0;
    this.noneSelected = none;
    this.button.disabled = none || this.blocked.length > 0;
    this.button.title = none
      ? "Select a model first."
      : this.blocked.length
        ? `Images need vision models: ${this.blocked.join(", ")} ${this.blocked.length === 1 ? "does" : "do"} not read images.`
        : "Attach an image (or paste one into the message)";
    this.renderNote();
  }

  renderNote() {
    const message = this.image && this.blocked.length
      ? `${this.blocked.join(", ")} ${this.blocked.length === 1 ? "does" : "do"} not read images: remove the image or deselect ${this.blocked.length === 1 ? "it" : "them"}.`
      : "";
    this.note.textContent = message;
    this.note.hidden = !message;
  }

  /** Why the image cannot go with the selected models, or null. */
  problem() {
    return this.image && this.blocked.length ? this.note.textContent : null;
  }

  setDisabled(disabled) {
    this.button.disabled = disabled || this.noneSelected || this.blocked.length > 0;
  }
}
