// Model output is untrusted: Markdown is rendered by marked, then sanitized by DOMPurify with an
// allowlist, and inserted as a DOM fragment, never as an HTML string on the live page.

import { Marked } from "../vendor/marked-18.2.1/marked.esm.js";
import DOMPurify from "../vendor/dompurify-3.4.18/purify.es.mjs";
import hljs from "../vendor/highlight.js-11.12.0/highlight.min.js";

// Highlighting re-runs on every streamed frame; past this size a block stays plain.
const HIGHLIGHT_MAX_CHARS = 20000;

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

function codeLanguage(info) {
  const lang = (info || "").trim().split(/\s+/)[0].toLowerCase();
  return /^[\w+#.-]{1,32}$/.test(lang) ? lang : "";
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    // Raw HTML from a model is shown as the text it is, the way the model wrote it.
    html({ text, block }) {
      return block ? `<p class="raw-html">${escapeHtml(text)}</p>` : escapeHtml(text);
    },
    // Task-list checkboxes would be form inputs, which the sanitizer removes; keep them readable.
    checkbox({ checked }) {
      return checked ? "[x] " : "[ ] ";
    },
    code({ text, lang }) {
      const language = codeLanguage(lang);
      let body = null;
      if (language && text.length <= HIGHLIGHT_MAX_CHARS && hljs.getLanguage(language)) {
        try {
          body = hljs.highlight(text, { language, ignoreIllegals: true }).value;
        } catch {
          body = null;
        }
      }
      const classes = language ? `hljs language-${language}` : "hljs";
      return `<pre><code class="${classes}">${body ?? escapeHtml(text)}</code></pre>\n`;
    },
    image({ href, text }) {
      // No remote content: an image becomes a link to it.
      return `<a href="${escapeHtml(href || "")}">${escapeHtml(text || href || "image")}</a>`;
    },
  },
});

const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
  "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead",
  "tr", "ul",
];

const PURIFY_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR: ["href", "title", "class", "start", "align"],
  // Belt and braces: even if the allowlist grows, these stay out.
  FORBID_TAGS: [
    "img", "svg", "math", "style", "script", "iframe", "frame", "form", "input", "button",
    "textarea", "select", "object", "embed", "link", "meta", "base", "video", "audio", "source",
    "track", "picture", "template", "noscript",
  ],
  FORBID_ATTR: ["style", "srcset", "src", "action", "formaction", "xlink:href"],
  ALLOW_DATA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_DOM_FRAGMENT: true,
};

const CLASS_PATTERN = /^(?:hljs|hljs-[\w-]+|language-[\w+#.-]+|raw-html|[\w-]+_)$/;

const purifier = DOMPurify(window);

purifier.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName.startsWith("on")) {
    data.keepAttr = false;
    return;
  }
  // Page styles must not be reachable from model output: only the classes the renderer emits.
  if (data.attrName === "class") {
    const kept = data.attrValue.split(/\s+/).filter((name) => CLASS_PATTERN.test(name));
    data.attrValue = kept.join(" ");
    if (!kept.length) data.keepAttr = false;
  }
});

purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  }
});

/** Markdown text to a sanitized DocumentFragment. */
export function renderMarkdown(text) {
  let html;
  try {
    html = marked.parse(text);
  } catch {
    html = `<p>${escapeHtml(text)}</p>`;
  }
  const fragment = purifier.sanitize(html, PURIFY_CONFIG);
  // The language label is drawn by CSS from data-lang, set here so no data-* attribute has to
  // pass the sanitizer.
  for (const code of fragment.querySelectorAll("pre > code[class*='language-']")) {
    const match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    if (match) code.parentElement.dataset.lang = match[1];
  }
  return fragment;
}
