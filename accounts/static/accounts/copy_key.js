// Copy buttons on the pages that show a new API key once: the button names the input it copies
// (data-copy-target). The Clipboard API needs a secure context; elsewhere the selection is copied.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copyTarget);
  const status = button.parentElement.querySelector("[data-testid=copy-status]");
  if (!input) return;
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(input.value);
      copied = true;
    }
  } catch (error) {
    copied = false;
  }
  if (!copied) {
    input.focus();
    input.select();
    copied = document.execCommand("copy");
  }
  if (status) status.textContent = copied ? "Copied." : "Select the key and copy it.";
});
