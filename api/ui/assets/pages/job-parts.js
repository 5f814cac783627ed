// The job page's parts that are pure functions of the data: progress figures, the token report, the
// checkpoints table, samples and event lines. The page (job.js) loads the data and keeps them current.

import { ACTIVE, formatClock, formatDate, formatDuration, formatNumber, formatValue, h, notice } from "../dom.js";

const REPORT_ROWS = [
  ["examples", "Examples"],
  ["usable_examples", "Usable examples"],
  ["tokens", "Tokens"],
  ["supervised_tokens", "Supervised tokens"],
  ["trained_tokens_per_epoch", "Trained tokens per epoch"],
  ["max_example_tokens", "Longest example (tokens)"],
  ["max_seq_length", "max_seq_length"],
];
// A preference (DPO) file's report (training/preference.py).
const PREFERENCE_REPORT_ROWS = [
  ["examples", "Examples"],
  ["usable_examples", "Usable examples"],
  ["prompt_tokens", "Prompt tokens"],
  ["chosen_tokens", "Preferred output tokens"],
  ["rejected_tokens", "Non-preferred output tokens"],
  ["trained_tokens_per_epoch", "Trained tokens per epoch"],
  ["max_example_tokens", "Longest example (tokens)"],
  ["max_seq_length", "max_seq_length"],
];

/** The progress bar's fraction, its label and the ETA, for any status. */
export function progressSummary(job) {
  const progress = job.validation_progress;
  if (job.status === "validating_files") {
    if (!progress) return { fraction: 0, label: "Checking the files", eta: "" };
    const of = progress.rows_estimated ? ` of ~${formatNumber(progress.rows_estimated)}` : "";
    return {
      fraction: progress.bytes_total ? progress.bytes_done / progress.bytes_total : 0,
      label: `Checking the ${progress.file} file: ${formatNumber(progress.rows_done)}${of} examples`,
      eta: progress.eta_seconds !== null ? `about ${formatDuration(progress.eta_seconds)} left` : "",
    };
  }
  if (!job.total_steps) {
    return {
      fraction: job.status === "succeeded" ? 1 : 0,
      label: job.status === "queued" ? "Waiting for a worker" : job.status,
      eta: "",
    };
  }
  const fraction = job.status === "succeeded" ? 1 : job.completed_steps / job.total_steps;
  const paused = job.status === "paused" ? " · paused, resume to continue" : "";
  const label = `Step ${formatNumber(job.completed_steps)} of ${formatNumber(job.total_steps)} (${Math.floor((job.completed_steps / job.total_steps) * 100)}%)${paused}`;
  let eta = "";
  if (ACTIVE.has(job.status) && job.estimated_finish) {
    const left = Math.max(0, job.estimated_finish - Date.now() / 1000);
    eta = `ETA ${formatClock(job.estimated_finish)} · ${formatDuration(left)} left`;
  }
  return { fraction, label, eta };
}

/** The job's own fields worth showing beside its hyperparameters, as [label, value] (empty ones left out). */
export function detailRows(job) {
  const rows = [
    ["Model", job.model],
    ["Continues from", job.parent ? `${job.parent.checkpoint || job.parent.model} (step ${job.parent.step})` : null],
    ["Fine-tuned model", job.fine_tuned_model],
    ["Training file", job.training_file],
    ["Validation file", job.validation_file],
    ["Seed", job.seed],
    ["Suffix", job.user_provided_suffix],
    ["Created", formatDate(job.created_at)],
    ["Finished", job.finished_at ? formatDate(job.finished_at) : null],
    ...Object.entries(job.metadata || {}).map(([key, value]) => [`metadata.${key}`, value]),
    ...(job.serving_warnings || []).map((w) => [`Serving (${w.engine}, ${w.setting})`, w.message]),
  ];
  return rows.filter(([, value]) => value !== null && value !== undefined);
}

/** "2 (lines 4, 9): truncated to 2048 tokens", or "none". */
function finding(item) {
  if (!item || !item.count) return "none";
  const more = item.count > item.lines.length ? ", …" : "";
  return `${item.count} (line${item.count > 1 ? "s" : ""} ${item.lines.join(", ")}${more}): ${item.action}`;
}

/** The validation stage's figures, a column per file role; `reportOf(role)` is that file's report or null. */
export function tokenReportTable(roles, files, reportOf) {
  const preference = roles.some((role) => reportOf(role)?.format === "preference");
  const cell = (role, render) => {
    const report = reportOf(role);
    return h("td.num", {}, report ? render(report) : "–");
  };
  const heading = (role) =>
    h(
      "th.num",
      {},
      `${role[0].toUpperCase()}${role.slice(1)} file`,
      h("div.sub.mono", {}, files[role] ? `${files[role].filename} · ${files[role].id}` : ""),
    );
  const row = (label, render) =>
    h(
      "tr",
      {},
      h("th", {}, label),
      roles.map((role) => cell(role, render)),
    );
  return h(
    "div.table-wrap",
    {},
    h(
      "table.table.report-table",
      {},
      h("thead", {}, h("tr", {}, h("th", {}, ""), roles.map(heading))),
      h(
        "tbody",
        {},
        (preference ? PREFERENCE_REPORT_ROWS : REPORT_ROWS).map(([key, label]) =>
          row(label, (report) => formatNumber(report[key])),
        ),
        row("Longer than max_seq_length", (report) => finding(report.long_examples)),
        preference
          ? row("Dropped for length", (report) => finding(report.dropped_examples))
          : row("Nothing to learn (skipped)", (report) => finding(report.unsupervised_examples)),
      ),
    ),
  );
}

/** Checkpoints newest first, each with `downloadButton(checkpoint)`. */
export function checkpointsTable(checkpoints, downloadButton) {
  const metric = (checkpoint, key) => formatValue(checkpoint.metrics?.[key]);
  return h(
    "div.table-wrap",
    {},
    h(
      "table.table.checkpoints-table",
      {},
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th.num", {}, "Step"),
          h("th.hide-sm", {}, "Name"),
          h("th.num", {}, "Train loss"),
          h("th.num", {}, "Validation loss"),
          h("th.hide-sm", {}, "Created"),
          h("th"),
        ),
      ),
      h(
        "tbody",
        {},
        checkpoints.map((checkpoint) =>
          h(
            "tr",
            { "data-checkpoint-id": checkpoint.id },
            h("td.num", {}, formatNumber(checkpoint.step_number)),
            h("td.hide-sm.mono.sub", {}, checkpoint.fine_tuned_model_checkpoint),
            h("td.num", {}, metric(checkpoint, "train_loss")),
            h("td.num", {}, metric(checkpoint, "valid_loss")),
            h("td.hide-sm", {}, formatDate(checkpoint.created_at)),
            h("td.actions", {}, downloadButton(checkpoint)),
          ),
        ),
      ),
    ),
  );
}

/** samples.jsonl's conversations, or why there are none (`samples` null: the file did not load). */
export function samplesBody(samples) {
  if (samples === null) return notice("error", "The samples could not be read", "samples.jsonl did not load.");
  if (!samples.length)
    return h("p.muted", {}, "Samples are written when a job has a validation file. The result files are above.");
  return samples.map(sampleCard);
}

export function eventItem(event) {
  return h(
    `li.event.level-${event.level}`,
    { "data-event-id": event.id, "data-type": event.type },
    h(
      "time",
      { datetime: new Date(event.created_at * 1000).toISOString(), title: formatDate(event.created_at) },
      formatClock(event.created_at),
    ),
    h(`span.level`, {}, event.type === "metrics" ? "metrics" : event.level),
    h("span.message", {}, event.message),
  );
}

function sampleCard(sample, index) {
  const prompt = sample.prompt || [];
  return h(
    "article.sample",
    {},
    h(
      "div.sample-prompt",
      {},
      h("div.sample-label", {}, `Prompt ${index + 1}`),
      prompt.map((message) => h("div.turn", {}, h("span.role", {}, message.role), h("span", {}, message.content))),
    ),
    h("div.sample-ref", {}, h("div.sample-label", {}, "Reference"), h("p", {}, sample.reference)),
    h(
      "div.sample-compare",
      {},
      h("div.sample-answer.base", {}, h("div.sample-label", {}, "Base model"), h("p", {}, sample.base || "(empty)")),
      h(
        "div.sample-answer.adapter",
        {},
        h("div.sample-label", {}, "With the adapter"),
        h("p", {}, sample.adapter || "(empty)"),
      ),
    ),
  );
}
