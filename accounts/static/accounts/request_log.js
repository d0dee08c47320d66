// The request log's detail page: each block the server marked data-markdown holds the logged text, written
// there escaped; it is rendered the way the playground renders answers (marked, then DOMPurify with the
// playground's allowlist) and put back as a sanitized DOM fragment, never as an HTML string.

import { renderMarkdown } from "../playground/markdown.js";

for (const block of document.querySelectorAll("[data-markdown]")) {
  const text = block.textContent;
  block.replaceChildren(renderMarkdown(text));
  block.classList.add("markdown", "is-rendered");
}
