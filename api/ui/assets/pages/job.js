// One job: status and progress, the live loss chart, hyperparameters, the validation stage's token report,
// checkpoints and downloads, base-vs-adapter samples, and the events log. Events arrive live (live.js); the
// job object is re-read every 2 s while the job is active, for its progress figures and ETA.

import { api, authHeaders, download, errorOf, listAll } from "../api.js";
import { LossChart, LossSeries } from "../chart.js";
import {
  ACTIVE,
  FINISHED,
  fill,
  formatBytes,
  formatDate,
  formatDuration,
  formatNumber,
  formatValue,
  h,
  jobDuration,
  notice,
  progressBar,
  statusChip,
} from "../dom.js";
import { POLL_SECONDS, followEvents } from "../live.js";
import { confirmAction } from "./confirm.js";
import {
  checkpointsTable,
  detailRows,
  eventItem,
  progressSummary,
  samplesBody,
  tokenReportTable,
} from "./job-parts.js";

export function renderJob(main, { params: [jobId] }) {
  document.title = `${jobId} · loraq`;
  const view = new JobView(main, jobId);
  view.start();
  return () => view.stop();
}

class JobView {
  constructor(main, jobId) {
    this.main = main;
    this.jobId = jobId;
    this.path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
    this.controller = new AbortController();
    this.job = null;
    this.events = [];
    this.series = new LossSeries();
    this.reports = {};
    this.checkpoints = [];
    this.resultsShown = false;
    this.timer = null;
    this.lastPoll = 0;
    this.follower = null;
    this.chart = null;
    fill(main, h("div.loading", {}, "Loading job…"));
  }

  async start() {
    try {
      this.job = await this.get(this.path);
    } catch (error) {
      if (this.controller.signal.aborted) return;
      const title = error.status === 404 ? "No such job" : "The job could not be loaded";
      fill(this.main, backLink(), notice("error", title, error.message));
      return;
    }
    this.layout();
    this.chart = new LossChart(this.el.chart, this.series);
    this.renderJob();
    this.loadFiles();
    this.loadCheckpoints();
    if (FINISHED.has(this.job.status)) this.loadResults();
    this.follower = followEvents(this.jobId, {
      onEvents: (events) => this.addEvents(events),
      onEnd: (job) => this.setJob(job),
      onMode: (mode) => this.showMode(mode),
      onError: (error) => this.flash(error.message),
    });
    if (!ACTIVE.has(this.job.status)) this.follower.setFinished((this.job.finished_at || this.job.created_at) * 1000);
    this.showMode(this.follower.mode());
    this.schedulePoll();
  }

  stop() {
    this.controller.abort();
    clearTimeout(this.timer);
    this.follower?.stop();
    this.chart?.destroy();
  }

  get(path) {
    return api(path, { signal: this.controller.signal });
  }

  // ------------------------------------------------------------------ layout
  layout() {
    const el = (this.el = {});
    el.title = h("h1.mono", {}, this.jobId);
    el.subtitle = h("p.muted");
    el.status = h("span#job-status");
    el.download = h(
      "button#download-adapter.button.primary",
      { type: "button", onclick: () => this.downloadAdapter() },
      "Download adapter",
    );
    el.cancel = h(
      "button#cancel-job.button.danger-outline",
      { type: "button", onclick: () => this.cancel() },
      "Cancel job",
    );
    el.pause = h("button#pause-job.button", { type: "button", onclick: () => this.act("pause") }, "Pause");
    el.resume = h("button#resume-job.button", { type: "button", onclick: () => this.act("resume") }, "Resume");
    el.downloadNote = h("span.download-note.muted", { role: "status" });
    el.flash = h("div.flash", { role: "alert", hidden: true });
    el.error = h("div");
    el.progress = h("div#progress.stat-body");
    el.speed = h("div.stat-value", {}, "–");
    el.tokens = h("div.stat-value", {}, "–");
    el.tokensSub = h("div.sub");
    el.duration = h("div.stat-value", {}, "–");
    el.durationSub = h("div.sub");
    el.chart = h("div#loss-chart.chart");
    el.logScale = h("input#log-scale", {
      type: "checkbox",
      onchange: () => this.chart.setLogScale(el.logScale.checked),
    });
    el.details = h("dl#job-details.kv");
    el.hyperparameters = h("dl#hyperparameters.kv.kv-compact");
    el.report = h(
      "div.card-body",
      {},
      h("p.muted", {}, "The validation stage's figures appear here once it has read the files."),
    );
    el.checkpoints = h("div.card-body", {}, h("p.muted", {}, "Loading checkpoints…"));
    el.samples = h("section#samples.card", { hidden: true });
    el.resultFiles = h("div");
    el.mode = h("span#live-mode.live-mode");
    el.hideMetrics = h("input#hide-metrics", { type: "checkbox" });
    el.events = h("ol#events-log.events");
    el.eventCount = h("span.count");
    el.hideMetrics.addEventListener("change", () => el.events.classList.toggle("hide-metrics", el.hideMetrics.checked));

    fill(
      this.main,
      backLink(),
      h(
        "div.page-head",
        {},
        h("div.title-block", {}, h("div.title-line", {}, el.title, el.status), el.subtitle),
        h("div.actions", {}, el.downloadNote, el.pause, el.resume, el.cancel, el.download),
      ),
      el.flash,
      el.error,
      h(
        "div.stats",
        {},
        h("section.card.stat.stat-wide", {}, h("div.stat-label", {}, "Progress"), el.progress),
        h(
          "section.card.stat",
          {},
          h("div.stat-label", {}, "Tokens / s"),
          el.speed,
          h("div.sub", {}, "at the last logged step"),
        ),
        h("section.card.stat", {}, h("div.stat-label", {}, "Trained tokens"), el.tokens, el.tokensSub),
        h("section.card.stat", {}, h("div.stat-label", {}, "Duration"), el.duration, el.durationSub),
      ),
      h(
        "section.card",
        {},
        h(
          "div.card-head",
          {},
          h("h2", {}, "Loss"),
          h(
            "span.muted",
            {},
            "training loss per logged step · validation loss per checkpoint · learning rate (right axis)",
          ),
          h("label.toggle", {}, el.logScale, " Log scale"),
        ),
        h("div.card-body", {}, el.chart),
      ),
      h(
        "div.grid-2",
        {},
        h(
          "section.card",
          {},
          h("div.card-head", {}, h("h2", {}, "Hyperparameters")),
          h("div.card-body", {}, el.hyperparameters),
        ),
        h("section.card", {}, h("div.card-head", {}, h("h2", {}, "Job")), h("div.card-body", {}, el.details)),
      ),
      h(
        "section#token-report.card",
        {},
        h(
          "div.card-head",
          {},
          h("h2", {}, "Data"),
          h("span.muted", {}, "tokens counted by the validation stage with the base model's tokenizer"),
        ),
        el.report,
      ),
      h("section#checkpoints.card", {}, h("div.card-head", {}, h("h2", {}, "Checkpoints")), el.checkpoints),
      el.samples,
      h(
        "section#events.card",
        {},
        h(
          "div.card-head",
          {},
          h("h2", {}, "Events ", el.eventCount),
          el.mode,
          h("label.toggle", {}, el.hideMetrics, " Hide metrics"),
        ),
        h("div.card-body.events-body", {}, el.events),
      ),
    );
  }

  flash(text) {
    this.el.flash.textContent = text;
    this.el.flash.hidden = !text;
  }

  showMode(mode) {
    if (mode === "polling" && !ACTIVE.has(this.job.status)) mode = "finished";
    const labels = {
      finished: "job finished",
      connecting: "connecting…",
      stream: "live · streaming",
      polling: `live · polling every ${POLL_SECONDS} s`,
      reconnecting: "reconnecting…",
      ended: "job finished · stream closed",
    };
    this.el.mode.textContent = labels[mode] || mode;
    this.el.mode.dataset.mode = mode;
  }

  // ------------------------------------------------------------------ the job object
  schedulePoll(delay = POLL_SECONDS * 1000) {
    clearTimeout(this.timer);
    if (!this.job || !ACTIVE.has(this.job.status)) return;
    this.timer = setTimeout(async () => {
      this.lastPoll = Date.now();
      try {
        if (!document.hidden) this.setJob(await this.get(this.path));
      } catch (error) {
        if (this.controller.signal.aborted) return;
        this.flash(error.message);
      }
      this.schedulePoll();
    }, delay);
  }

  setJob(job) {
    const wasActive = ACTIVE.has(this.job.status);
    this.job = job;
    this.flash("");
    this.renderJob();
    if (wasActive && !ACTIVE.has(job.status)) {
      this.follower?.setFinished();
      if (this.follower?.mode() === "polling") this.showMode("polling");
      this.loadCheckpoints();
      this.loadFiles();
      this.loadResults();
    }
    this.schedulePoll();
  }

  renderJob() {
    const job = this.job;
    const el = this.el;
    fill(el.status, statusChip(job.status, job.pause_requested));
    el.subtitle.textContent = [job.fine_tuned_model || job.user_provided_suffix, job.model].filter(Boolean).join(" · ");
    el.cancel.hidden = !ACTIVE.has(job.status);
    // A running job pauses once it has checkpointed; meanwhile (pause_requested) neither button applies.
    el.pause.hidden = !ACTIVE.has(job.status) || job.status === "paused" || job.pause_requested;
    el.resume.hidden = job.status !== "paused";
    el.download.disabled = job.status !== "succeeded";
    el.download.title =
      job.status === "succeeded"
        ? "The trained adapter as a .tar.gz"
        : "The adapter can be downloaded once the job has succeeded";
    fill(el.error, job.error ? notice("error", `Job ${job.status}: ${job.error.code}`, job.error.message) : null);
    this.renderProgress();
    el.tokens.textContent = formatNumber(job.trained_tokens);
    el.tokensSub.textContent = job.estimated_tokens ? `of ${formatNumber(job.estimated_tokens)} estimated` : "";
    el.duration.textContent = formatDuration(jobDuration(job));
    el.durationSub.textContent = job.finished_at
      ? `finished ${formatDate(job.finished_at)}`
      : `created ${formatDate(job.created_at)}`;
    fill(
      el.hyperparameters,
      Object.entries(job.hyperparameters || {}).map(([key, value]) => [
        h("dt", {}, key),
        h("dd.mono", {}, formatValue(value)),
      ]),
    );
    fill(
      el.details,
      detailRows(job).map(([key, value]) => [h("dt", {}, key), h("dd.mono", {}, String(value))]),
    );
  }

  renderProgress() {
    const { fraction, label, eta } = progressSummary(this.job);
    this.el.progress.dataset.status = this.job.status;
    fill(
      this.el.progress,
      progressBar(fraction),
      h("div.progress-text", {}, h("span#progress-steps", {}, label), h("span#eta.muted", {}, eta)),
    );
  }

  // ------------------------------------------------------------------ events
  addEvents(events) {
    let chartChanged = false;
    let checkpointSeen = false;
    let progressSeen = false;
    for (const event of events) {
      this.events.push(event);
      chartChanged = this.series.addEvent(event) || chartChanged;
      if (event.data?.file && event.data.examples !== undefined) this.reports[event.data.file] = event.data;
      if (event.message.startsWith("Checkpoint created")) checkpointSeen = true;
      if (typeof event.data?.tokens_per_second === "number") {
        this.el.speed.textContent = formatNumber(event.data.tokens_per_second);
        progressSeen = true;
      }
    }
    // A step was reported: the job's progress and ETA are re-read now (at most once a second), not at the next poll.
    if (progressSeen && Date.now() - this.lastPoll > 1000) this.schedulePoll(0);
    if (chartChanged) this.chart.update();
    if (checkpointSeen) this.loadCheckpoints();
    this.renderReport();
    const items = events.map(eventItem).reverse();
    this.el.events.prepend(...items);
    this.el.eventCount.textContent = `(${this.events.length})`;
  }

  // ------------------------------------------------------------------ token report
  async loadFiles() {
    const roles = [
      ["training", this.job.training_file],
      ["validation", this.job.validation_file],
    ].filter(([, id]) => id);
    this.files = {};
    await Promise.all(
      roles.map(async ([role, id]) => {
        try {
          this.files[role] = await this.get(`/v1/files/${encodeURIComponent(id)}`);
        } catch {
          this.files[role] = { id, filename: "(deleted)", token_reports: null };
        }
      }),
    );
    this.renderReport();
  }

  renderReport() {
    const files = this.files || {};
    const roles = ["training", "validation"].filter((role) => files[role] || this.reports[role]);
    const reportOf = (role) => this.reports[role] || files[role]?.token_reports?.[this.job.model] || null;
    if (roles.some(reportOf)) fill(this.el.report, tokenReportTable(roles, files, reportOf));
  }

  // ------------------------------------------------------------------ checkpoints
  async loadCheckpoints() {
    try {
      this.checkpoints = await listAll(`${this.path}/checkpoints`, { signal: this.controller.signal });
    } catch (error) {
      if (!this.controller.signal.aborted)
        fill(this.el.checkpoints, notice("error", "The checkpoints could not be loaded", error.message));
      return;
    }
    for (const checkpoint of this.checkpoints) this.series.addCheckpoint(checkpoint);
    this.chart.update();
    if (!this.checkpoints.length) {
      const text = ACTIVE.has(this.job.status)
        ? "None yet: one is saved every save_steps steps."
        : "This job saved no checkpoints.";
      fill(this.el.checkpoints, h("p.muted", {}, text));
      return;
    }
    const download = (checkpoint) =>
      this.downloadButton(
        `${this.path}/checkpoints/${checkpoint.id}/adapter`,
        `${this.jobId}-step-${checkpoint.step_number}-adapter.tar.gz`,
        "Download",
      );
    fill(this.el.checkpoints, checkpointsTable(this.checkpoints, download));
  }

  // ------------------------------------------------------------------ downloads, pause, resume and cancel
  downloadButton(path, name, label) {
    const button = h("button.button.small", { type: "button" }, label);
    button.addEventListener("click", () => this.runDownload(button, path, name));
    return button;
  }

  downloadAdapter() {
    return this.runDownload(this.el.download, `${this.path}/adapter`, `${this.jobId}-adapter.tar.gz`);
  }

  async runDownload(button, path, name) {
    const label = button.textContent;
    button.disabled = true;
    try {
      const result = await download(path, name, (received, total) => {
        button.textContent = total ? `${Math.floor((received / total) * 100)}%` : formatBytes(received);
      });
      const checked = result.sha256 ? ` · sha256 ${result.sha256.slice(0, 12)}… verified` : "";
      this.el.downloadNote.textContent = `${result.name} (${formatBytes(result.bytes)})${checked}`;
    } catch (error) {
      this.flash(`Download failed: ${error.message}`);
    } finally {
      button.textContent = label;
      button.disabled = button === this.el.download && this.job.status !== "succeeded";
    }
  }

  /** Pause (a running job checkpoints at its next step first) or resume (back to the queue). */
  async act(action) {
    const button = action === "pause" ? this.el.pause : this.el.resume;
    button.disabled = true;
    try {
      this.setJob(await api(`${this.path}/${action}`, { method: "POST" }));
    } catch (error) {
      this.flash(`${action === "pause" ? "Pause" : "Resume"} failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async cancel() {
    const sure = await confirmAction(
      `Cancel ${this.jobId}?`,
      "A running job stops at its next training step; its checkpoints are kept and stay downloadable.",
      "Cancel job",
    );
    if (!sure) return;
    this.el.cancel.disabled = true;
    try {
      this.setJob(await api(`${this.path}/cancel`, { method: "POST" }));
    } catch (error) {
      this.flash(`Cancel failed: ${error.message}`);
    } finally {
      this.el.cancel.disabled = false;
    }
  }

  // ------------------------------------------------------------------ result files and samples
  async loadResults() {
    if (this.resultsShown || !this.job.result_files?.length) return;
    this.resultsShown = true;
    const records = await Promise.all(
      this.job.result_files.map((id) => this.get(`/v1/files/${encodeURIComponent(id)}`).catch(() => null)),
    );
    const files = records.filter(Boolean);
    const samplesFile = files.find((file) => file.filename === "samples.jsonl");
    let samples = [];
    if (samplesFile) {
      try {
        const response = await fetch(`/v1/files/${samplesFile.id}/content`, {
          headers: authHeaders(),
          signal: this.controller.signal,
        });
        if (!response.ok) throw await errorOf(response);
        samples = (await response.text())
          .split("\n")
          .filter(Boolean)
          .map((line) => JSON.parse(line));
      } catch {
        if (this.controller.signal.aborted) return;
        samples = null;
      }
    }
    const fileButtons = files.map((file) =>
      this.downloadButton(
        `/v1/files/${file.id}/content`,
        file.filename,
        `${file.filename} (${formatBytes(file.bytes)})`,
      ),
    );
    fill(
      this.el.samples,
      h("div.card-head", {}, h("h2", {}, "Samples: base model vs adapter"), h("div.actions", {}, fileButtons)),
      h("div.card-body", {}, samplesBody(samples)),
    );
    this.el.samples.hidden = false;
  }
}

function backLink() {
  return h("a.back", { href: "/ui/", "data-link": true }, "← All jobs");
}
