// The arena leaderboard page: the team picker shows its board as soon as it changes (the "Show" button stays for
// browsers without script), and each row's 95% interval is drawn as a bar on one scale shared by every row.
// Reads only the numbers the server rendered into data attributes; writes no markup.

function number(value) {
  if (value === undefined || value === "") return null;
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : null;
}

function pickerSubmitsOnChange() {
  const form = document.getElementById("board-filter");
  const picker = document.getElementById("board-team");
  const button = document.getElementById("board-show");
  if (!form || !picker) return;
  if (button) button.hidden = true;
  picker.addEventListener("change", () => form.requestSubmit());
}

function drawIntervals() {
  const rows = [...document.querySelectorAll('[data-testid="leaderboard-row"]')].map((row) => ({
    track: row.querySelector(".ci-track"),
    rating: number(row.dataset.rating),
    low: number(row.dataset.ciLow),
    high: number(row.dataset.ciHigh),
  }));
  const drawn = rows.filter((row) => row.track && row.rating !== null && row.low !== null && row.high !== null);
  if (!drawn.length) return;
  let min = Math.min(...drawn.map((row) => Math.min(row.low, row.rating)));
  let max = Math.max(...drawn.map((row) => Math.max(row.high, row.rating)));
  if (max - min < 1) {
    min -= 50;
    max += 50;
  }
  const pad = (max - min) * 0.04;
  min -= pad;
  max += pad;
  const at = (value) => `${(((value - min) / (max - min)) * 100).toFixed(2)}%`;
  for (const row of drawn) {
    const bar = row.track.querySelector(".ci-bar");
    const dot = row.track.querySelector(".ci-dot");
    // CSSOM writes: allowed under the page's style-src 'self', unlike style attributes in markup.
    bar.style.left = at(row.low);
    bar.style.width = `${(((row.high - row.low) / (max - min)) * 100).toFixed(2)}%`;
    dot.style.left = at(row.rating);
    row.track.dataset.drawn = "true";
    row.track.title = `${Math.round(row.low)} to ${Math.round(row.high)}, rated ${Math.round(row.rating)}`;
  }
}

pickerSubmitsOnChange();
drawIntervals();
