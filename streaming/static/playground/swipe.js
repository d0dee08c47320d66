// Phones show one model column per screen width, side by side: a swipe moves to the next (the columns scroll
// sideways and snap). This is the position indicator above them: a dot per column, the current one marked, and
// which model it is; a dot moves to its column. Wider screens show every column at once and hide it.

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

export class ColumnPager {
  constructor(columns) {
    this.columns = columns;
    this.index = 0;
    this.element = element("nav", "column-pager");
    this.element.dataset.testid = "column-position";
    this.element.setAttribute("aria-label", "Model columns");
    this.dots = element("div", "column-dots");
    this.label = element("span", "column-pager-label");
    this.label.setAttribute("aria-live", "polite");
    this.element.append(this.dots, this.label);
    columns.before(this.element);
    columns.addEventListener("scroll", () => this.update(), { passive: true });
    new MutationObserver(() => this.rebuild()).observe(columns, { childList: true });
    window.addEventListener("resize", () => this.update());
    this.rebuild();
  }

  items() {
    return [...this.columns.children].filter((child) => child.dataset.testid === "column");
  }

  rebuild() {
    const items = this.items();
    this.dots.replaceChildren();
    items.forEach((item, index) => {
      const dot = element("button", "column-dot");
      dot.type = "button";
      dot.dataset.testid = "column-dot";
      dot.setAttribute("aria-label", `Show ${item.dataset.model}`);
      dot.addEventListener("click", () => this.show(index));
      this.dots.append(dot);
    });
    this.element.hidden = items.length < 2;
    this.update();
  }

  /** The column whose left edge is nearest the scroller's: the one a swipe snapped to. */
  current() {
    const items = this.items();
    const left = this.columns.getBoundingClientRect().left;
    let best = 0;
    let distance = Infinity;
    items.forEach((item, index) => {
      const gap = Math.abs(item.getBoundingClientRect().left - left);
      if (gap < distance) {
        best = index;
        distance = gap;
      }
    });
    return best;
  }

  update() {
    const items = this.items();
    if (!items.length) return;
    this.index = Math.min(this.current(), items.length - 1);
    [...this.dots.children].forEach((dot, index) => {
      const on = index === this.index;
      dot.classList.toggle("is-current", on);
      if (on) dot.setAttribute("aria-current", "true");
      else dot.removeAttribute("aria-current");
    });
    this.label.textContent = `${this.index + 1} / ${items.length} · ${items[this.index].dataset.model}`;
  }

  show(index) {
    const item = this.items()[index];
    if (!item) return;
    const offset = item.getBoundingClientRect().left - this.columns.getBoundingClientRect().left;
    this.columns.scrollBy({ left: offset, behavior: "smooth" });
  }
}
