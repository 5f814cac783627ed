// The jobs list: newest first, refreshed every few seconds while the tab is visible.

import { api } from "../api.js";
import {
  ACTIVE,
  fill,
  formatAgo,
  formatDate,
  formatDuration,
  h,
  jobDuration,
  notice,
  progressBar,
  statusChip,
} from "../dom.js";

const REFRESH_SECONDS = 3;
const PAGE = 20;

export function renderJobs(main, { navigate }) {
  document.title = "Jobs · loraq";
  const count = h("span.count");
  const body = h("div.card-body", {}, h("div.loading", {}, "Loading jobs…"));
  fill(
    main,
    h(
      "div.page-head",
      {},
      h("div", {}, h("h1", {}, "Fine-tuning jobs ", count), h("p.muted", {}, "Every job of this key, newest first.")),
    ),
    h("section.card", {}, body),
  );

  let shown = PAGE;
  let timer = null;
  let stopped = false;
  const controller = new AbortController();

  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api(`/v1/fine_tuning/jobs?limit=${Math.min(shown, 100)}`, { signal: controller.signal });
      render(page);
    } catch (error) {
      if (controller.signal.aborted) return;
      fill(body, notice("error", "The jobs could not be loaded", error.message));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_SECONDS * 1000);
  }

  function render(page) {
    count.textContent = page.data.length ? `(${page.data.length}${page.has_more ? "+" : ""})` : "";
    if (!page.data.length) {
      fill(body, emptyState());
      return;
    }
    const rows = page.data.map((job) => jobRow(job, navigate));
    fill(
      body,
      h(
        "div.table-wrap",
        {},
        h(
          "table.table.jobs-table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}, "Job"),
              h("th", {}, "Status"),
              h("th.hide-sm", {}, "Model"),
              h("th.hide-sm", {}, "Created"),
              h("th.num.hide-sm", {}, "Duration"),
              h("th.progress-col", {}, "Progress"),
            ),
          ),
          h("tbody", {}, rows),
        ),
      ),
      page.has_more && shown < 100
        ? h(
            "div.table-foot",
            {},
            h("button.button", { type: "button", onclick: () => ((shown += PAGE), refresh()) }, "Show more"),
          )
        : null,
    );
  }

  refresh();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(timer);
  };
}

function jobRow(job, navigate) {
  const href = `/ui/jobs/${job.id}`;
  // The whole row opens the job; the id stays a real link (new tab, copy address).
  const open = (event) => {
    if (!event.target.closest("a")) navigate(href);
  };
  const name = job.fine_tuned_model || job.user_provided_suffix;
  const steps = job.total_steps
    ? `${job.completed_steps} / ${job.total_steps} steps`
    : job.status === "validating_files"
      ? "checking files"
      : "–";
  const fraction = job.total_steps ? job.completed_steps / job.total_steps : job.status === "succeeded" ? 1 : 0;
  return h(
    "tr",
    {
      "data-job-id": job.id,
      "data-status": job.status,
      class: ACTIVE.has(job.status) ? "active" : null,
      onclick: open,
    },
    h("td", {}, h("a.job-link.mono", { href, "data-link": true }, job.id), name ? h("div.sub", {}, name) : null),
    h("td", {}, statusChip(job.status, job.pause_requested)),
    h("td.hide-sm", {}, job.model),
    h("td.hide-sm", { title: formatDate(job.created_at) }, formatAgo(job.created_at)),
    h("td.num.hide-sm", {}, formatDuration(jobDuration(job))),
    h("td.progress-col", {}, progressBar(fraction), h("div.sub", {}, steps)),
  );
}

function emptyState() {
  return notice(
    "empty",
    "No fine-tuning jobs yet",
    "Upload a chat JSONL file on the Files page, then create a job through the API, for example:",
    h(
      "pre.snippet",
      {},
      'curl $LORAQ/fine_tuning/jobs -H "Authorization: Bearer $KEY" \\\n  -H "Content-Type: application/json" \\\n  -d \'{"model": "loraq-tiny-chat", "training_file": "file-…"}\'',
    ),
    h("a.button", { href: "/ui/files", "data-link": true }, "Go to files"),
  );
}
