// Sharing a saved run as a read-only link (/playground/shared/<token>/): the owner and the members of the run's
// team can open it once signed in; anyone else gets "not found". POST /playground/runs/<id>/share makes the link
// (the same one each time), DELETE stops sharing it.

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function button(text, className, testid) {
  const node = element("button", className, text);
  node.type = "button";
  if (testid) node.dataset.testid = testid;
  return node;
}

function csrfToken() {
  const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
  return input ? input.value : "";
}

export class ShareControl {
  /** @param {{button: HTMLButtonElement, runsUrl: string}} options */
  constructor({ button: trigger, runsUrl }) {
    this.trigger = trigger;
    this.runsUrl = runsUrl;
    this.runId = null;
    this.build();
    this.trigger.addEventListener("click", () => this.share());
    this.setRun(null);
  }

  build() {
    this.dialog = element("dialog", "snippet-dialog share-dialog");
    this.dialog.dataset.testid = "share-dialog";
    this.dialog.setAttribute("aria-labelledby", "share-title");
    const box = element("div", "snippet-box");
    const head = element("div", "snippet-head");
    const title = element("h2", "snippet-title", "Share this conversation");
    title.id = "share-title";
    this.note = element("p", "snippet-note share-note");
    this.note.setAttribute("aria-live", "polite");
    head.append(title, this.note);
    this.link = element("input", "share-link");
    this.link.type = "url";
    this.link.readOnly = true;
    this.link.dataset.testid = "share-link";
    this.link.setAttribute("aria-label", "Read-only link to this conversation");
    this.link.addEventListener("focus", () => this.link.select());
    const actions = element("div", "snippet-actions");
    this.stopButton = button("Stop sharing", "button button-quiet share-stop", "unshare-run");
    this.stopButton.addEventListener("click", () => this.unshare());
    this.copyButton = button("Copy link", "button", "share-copy");
    this.copyButton.addEventListener("click", () => this.copy());
    const close = button("Close", "button button-primary");
    close.addEventListener("click", () => this.dialog.close());
    actions.append(this.stopButton, this.copyButton, close);
    box.append(head, this.link, actions);
    this.dialog.append(box);
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) this.dialog.close();
    });
    document.body.append(this.dialog);
  }

  /** The saved run the page shows (null: nothing saved yet, nothing to share). */
  setRun(id) {
    this.runId = id;
    this.trigger.disabled = id == null;
    this.trigger.title = id == null ? "Send a message first: a saved run can be shared" : "Share a read-only link with your team";
  }

  async call(method) {
    let response;
    try {
      response = await fetch(`${this.runsUrl}${encodeURIComponent(this.runId)}/share`, {
        method,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
      });
    } catch {
      throw new Error("The gateway did not answer. Try again.");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok || !body) {
      const message = body && body.error && typeof body.error.message === "string" ? body.error.message : null;
      throw new Error(message || `The link could not be changed (HTTP ${response.status}).`);
    }
    return body;
  }

  show(body) {
    this.link.value = body.url || "";
    this.link.hidden = !body.shared;
    this.stopButton.hidden = !body.shared;
    this.copyButton.hidden = !body.shared;
    this.dialog.dataset.shared = String(Boolean(body.shared));
    if (!body.shared) {
      this.note.textContent = "No longer shared: the link now answers “not found”. Share again for a new link.";
    } else if (body.team) {
      this.note.textContent = `Read-only. You and the members of team ${body.team} can open it once signed in.`;
    } else {
      this.note.textContent = "Read-only. This run has no team, so only you can open it.";
    }
  }

  async share() {
    if (this.runId == null) return;
    this.note.textContent = "Making the link…";
    if (!this.dialog.open) this.dialog.showModal();
    try {
      this.show(await this.call("POST"));
      this.link.focus();
    } catch (error) {
      this.note.textContent = error.message;
    }
  }

  async unshare() {
    try {
      this.show(await this.call("DELETE"));
    } catch (error) {
      this.note.textContent = error.message;
    }
  }

  async copy() {
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(this.link.value);
        copied = true;
      } catch {
        copied = false;
      }
    }
    if (!copied) this.link.select();
    this.note.textContent = copied ? "Link copied to the clipboard." : "Selected. Press Ctrl+C (or Cmd+C) to copy.";
  }
}
