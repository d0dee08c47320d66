// Synced scrolling: with the toggle on, scrolling one column scrolls the others to the same place (the same share
// of their length), so answers of different lengths can be read side by side.

const STORAGE_KEY = "aigateway.playground.syncScroll";

export class ScrollSync {
  constructor(columns, actions) {
    this.columns = columns;
    // The scroll positions this module set itself: their scroll events are not the user's.
    this.driven = new WeakMap();
    const label = document.createElement("label");
    label.className = "sync-scroll";
    label.title = "Scroll every column together";
    this.input = document.createElement("input");
    this.input.type = "checkbox";
    this.input.dataset.testid = "sync-scroll";
    try {
      this.input.checked = localStorage.getItem(STORAGE_KEY) === "1";
    } catch {
      this.input.checked = false;
    }
    this.input.addEventListener("change", () => {
      try {
        localStorage.setItem(STORAGE_KEY, this.input.checked ? "1" : "0");
      } catch {
        // Storage disabled: the choice lasts for this page.
      }
    });
    const text = document.createElement("span");
    text.textContent = "Sync scroll";
    label.append(this.input, text);
    actions.prepend(label);
    // Scroll events do not bubble: caught on the way down instead.
    columns.addEventListener("scroll", (event) => this.onScroll(event.target), { capture: true, passive: true });
  }

  get enabled() {
    return this.input.checked;
  }

  onScroll(source) {
    if (!this.enabled || !(source instanceof Element) || !source.classList.contains("column-body")) return;
    const expected = this.driven.get(source);
    if (expected != null && Math.abs(source.scrollTop - expected) < 2) {
      this.driven.delete(source);
      return;
    }
    const range = source.scrollHeight - source.clientHeight;
    const share = range > 0 ? source.scrollTop / range : 0;
    for (const body of this.columns.querySelectorAll(".column-body")) {
      if (body === source) continue;
      const top = Math.round(share * (body.scrollHeight - body.clientHeight));
      if (Math.abs(body.scrollTop - top) < 2) continue;
      this.driven.set(body, top);
      body.scrollTop = top;
    }
  }
}
