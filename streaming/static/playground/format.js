// Number formatting shared by the model picker and the column stats.

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return "—";
  if (ms < 1000) return `${integer.format(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function formatRate(tokensPerSecond) {
  if (tokensPerSecond == null || !Number.isFinite(tokensPerSecond)) return "—";
  return `${tokensPerSecond < 10 ? tokensPerSecond.toFixed(1) : integer.format(tokensPerSecond)} tok/s`;
}

export function formatTokens(count) {
  return count == null ? "—" : integer.format(count);
}

/** Costs are tiny; six decimals keep a single short answer visible ($0.000012). */
export function formatCost(cost) {
  if (cost == null || !Number.isFinite(Number(cost))) return "—";
  const value = Number(cost);
  if (value === 0) return "$0";
  if (value >= 1) return `$${value.toFixed(2)}`;
  if (value >= 0.01) return `$${value.toFixed(4)}`;
  if (value < 0.000001) return "<$0.000001";
  return `$${value.toFixed(6)}`;
}

function formatPrice(perMillion) {
  const value = Number(perMillion);
  if (value === 0) return "$0";
  if (value < 0.1) return `$${value.toPrecision(2)}`;
  return Number.isInteger(value) ? `$${value}` : `$${value.toFixed(2)}`;
}

/** "Free", or input and output prices per million tokens. */
export function formatModelPrice(model) {
  const input = model.input_price_per_million;
  const output = model.output_price_per_million;
  if (!Number(input) && !Number(output)) return "Free";
  return `${formatPrice(input ?? 0)} in · ${formatPrice(output ?? 0)} out per 1M tokens`;
}

/** A size in bytes as people read it: "812 KB", "3.4 MB". */
export function formatBytes(bytes) {
  if (bytes == null || !Number.isFinite(bytes)) return "—";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${integer.format(bytes / 1024)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}
