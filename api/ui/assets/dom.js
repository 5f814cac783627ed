// Building elements and formatting values. Text always goes in as text nodes, never as HTML: file names,
// event messages and model answers are the user's data.

/** h("a#id.button", {href, onclick}, "text", child, [more]) -> element. Null and false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const [name, ...parts] = tag.split(/(?=[.#])/);
  const element = document.createElement(name.startsWith(".") || name.startsWith("#") ? "div" : name);
  for (const part of name.startsWith(".") || name.startsWith("#") ? [name, ...parts] : parts) {
    if (part.startsWith("#")) element.id = part.slice(1);
    else element.classList.add(part.slice(1));
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "class") element.className += (element.className ? " " : "") + value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

// ------------------------------------------------------------------ values

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function formatDate(unixSeconds) {
  return unixSeconds ? dateTime.format(new Date(unixSeconds * 1000)) : "–";
}

export function formatClock(unixSeconds) {
  return unixSeconds ? timeOnly.format(new Date(unixSeconds * 1000)) : "–";
}

/** 75 -> "1m 15s", 7300 -> "2h 1m". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function formatAgo(unixSeconds) {
  if (!unixSeconds) return "–";
  const seconds = Date.now() / 1000 - unixSeconds;
  return seconds < 5 ? "just now" : `${formatDuration(seconds)} ago`;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

const integer = new Intl.NumberFormat();

export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (!digits) return integer.format(Math.round(value));
  return value.toLocaleString(undefined, { maximumFractionDigits: digits });
}

/** A value of a hyperparameter or metric: short floats, exponents for tiny ones. */
export function formatValue(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) {
    return Math.abs(value) < 1e-3 ? value.toExponential(2) : String(Number(value.toPrecision(5)));
  }
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

// ------------------------------------------------------------------ job status

export const ACTIVE = new Set(["validating_files", "queued", "running", "paused"]);
export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

const STATUS_LABELS = { validating_files: "validating" };

/** The status chip; `pausing` (a pause pending on a running or validating job) says so beside the status. */
export function statusChip(status, pausing = false) {
  const label = STATUS_LABELS[status] || status;
  return h(`span.chip.status-${status}`, { "data-status": status }, pausing ? `${label} · pausing` : label);
}

/** Seconds a job has taken so far (to its finish, or to now while it is active). */
export function jobDuration(job) {
  const end = job.finished_at || (ACTIVE.has(job.status) ? Date.now() / 1000 : null);
  return end ? end - job.created_at : null;
}

export function progressBar(fraction, label) {
  const percent = Math.max(0, Math.min(100, (fraction || 0) * 100));
  return h(
    "div.progress",
    { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": percent.toFixed(0) },
    h("div.progress-fill", { style: `width: ${percent.toFixed(1)}%` }),
    label ? h("span.progress-label", {}, label) : null,
  );
}

/** An empty or error state: a title, a line of explanation, and optional extra content. */
export function notice(kind, title, text, ...extra) {
  return h(
    `div.notice.notice-${kind}`,
    { role: kind === "error" ? "alert" : null },
    h("h3", {}, title),
    text ? h("p", {}, text) : null,
    extra,
  );
}
