// Files: upload by drag-and-drop or the file picker (with progress), and the list, with each file's status.
// An upload the server rejects shows its message, which names the lines at fault.

import { api, authHeaders, download } from "../api.js";
import { fill, formatAgo, formatBytes, formatDate, formatNumber, h, notice, progressBar, statusChip } from "../dom.js";
import { confirmAction } from "./confirm.js";

export function renderFiles(main) {
  document.title = "Files · loraq";
  const picker = h("input#file-input", {
    type: "file",
    accept: ".jsonl,.json,application/jsonl,application/json",
    hidden: true,
    multiple: true,
  });
  const drop = h(
    "label.dropzone#dropzone",
    { for: "file-input", tabindex: "0" },
    h("strong", {}, "Drop a chat JSONL file here"),
    h(
      "span.muted",
      {},
      " or click to choose one. Each line: ",
      h("code", {}, '{"messages": [{"role": …, "content": …}, …]}'),
    ),
  );
  const uploads = h("div.uploads#uploads", { "aria-live": "polite" });
  const list = h("div.card-body", {}, h("div.loading", {}, "Loading files…"));
  fill(
    main,
    h(
      "div.page-head",
      {},
      h(
        "div",
        {},
        h("h1", {}, "Files"),
        h("p.muted", {}, "Training and validation data, and the result files of finished jobs."),
      ),
    ),
    h("section.card", {}, h("div.card-body", {}, drop, picker, uploads)),
    h("section.card", {}, h("div.card-head", {}, h("h2", {}, "Uploaded files")), list),
  );

  const controller = new AbortController();

  async function refresh() {
    try {
      const page = await api("/v1/files", { signal: controller.signal });
      renderList(page.data);
    } catch (error) {
      if (!controller.signal.aborted) fill(list, notice("error", "The files could not be loaded", error.message));
    }
  }

  function renderList(files) {
    if (!files.length) {
      fill(list, notice("empty", "No files yet", "Upload a chat JSONL file above to train on it."));
      return;
    }
    fill(
      list,
      h(
        "div.table-wrap",
        {},
        h(
          "table.table.files-table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}, "File"),
              h("th", {}, "Status"),
              h("th.hide-sm", {}, "Purpose"),
              h("th.num", {}, "Size"),
              h("th.num.hide-sm", {}, "Examples"),
              h("th.hide-sm", {}, "Uploaded"),
              h("th", {}, ""),
            ),
          ),
          h(
            "tbody",
            {},
            files.map((file) => fileRow(file, refresh)),
          ),
        ),
      ),
    );
  }

  async function uploadAll(fileList) {
    for (const file of fileList) await upload(file, uploads);
    refresh();
  }

  picker.addEventListener("change", () => {
    uploadAll([...picker.files]);
    picker.value = "";
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      picker.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    uploadAll([...event.dataTransfer.files]);
  });

  refresh();
  return () => controller.abort();
}

function fileRow(file, refresh) {
  const downloadButton = h("button.button.small", { type: "button" }, "Download");
  downloadButton.addEventListener("click", async () => {
    downloadButton.disabled = true;
    try {
      await download(`/v1/files/${file.id}/content`, file.filename);
    } catch (error) {
      alertInRow(downloadButton, error.message);
    } finally {
      downloadButton.disabled = false;
    }
  });
  const deleteButton = h("button.button.small.danger-outline", { type: "button" }, "Delete");
  deleteButton.addEventListener("click", async () => {
    const sure = await confirmAction(
      `Delete ${file.filename}?`,
      `${file.id} is removed with its stored bytes. Jobs that used it keep their results.`,
      "Delete file",
    );
    if (!sure) return;
    try {
      await api(`/v1/files/${file.id}`, { method: "DELETE" });
      refresh();
    } catch (error) {
      alertInRow(deleteButton, error.message);
    }
  });
  return h(
    "tr",
    { "data-file-id": file.id },
    h(
      "td",
      {},
      h("div.filename", {}, file.filename),
      h("div.sub.mono", {}, file.id),
      file.status_details ? h("div.details.error-text", {}, file.status_details) : null,
    ),
    h("td", {}, statusChip(file.status)),
    h("td.hide-sm", {}, file.purpose),
    h("td.num", {}, formatBytes(file.bytes)),
    h("td.num.hide-sm", {}, file.purpose === "fine-tune" ? formatNumber(file.examples) : "–"),
    h("td.hide-sm", { title: formatDate(file.created_at) }, formatAgo(file.created_at)),
    h("td.actions", {}, downloadButton, deleteButton),
  );
}

function alertInRow(button, text) {
  const cell = button.closest("td");
  cell.querySelector(".row-error")?.remove();
  cell.append(h("div.row-error.error-text", { role: "alert" }, text));
}

/** One upload, with a progress bar; XMLHttpRequest because fetch() reports no upload progress. */
function upload(file, container) {
  const bar = progressBar(0);
  const line = h(
    "div.upload-line",
    {},
    h("span.mono", {}, file.name),
    h("span.muted", {}, ` ${formatBytes(file.size)}`),
  );
  const item = h("div.upload", { "data-name": file.name }, line, bar);
  container.prepend(item);
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open("POST", "/v1/files");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable)
        bar.querySelector(".progress-fill").style.width = `${((event.loaded / event.total) * 100).toFixed(1)}%`;
    });
    const finish = (ok, text) => {
      bar.remove();
      item.classList.add(ok ? "upload-ok" : "upload-error");
      item.append(
        h(ok ? "div.upload-result" : "div.upload-result.error-text", { role: ok ? "status" : "alert" }, text),
      );
      resolve();
    };
    request.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // not JSON
      }
      if (request.status === 200 && body) {
        item.dataset.fileId = body.id;
        finish(true, `Uploaded as ${body.id}: ${formatNumber(body.examples)} examples.`);
      } else finish(false, body?.error?.message || `Upload failed: ${request.status} ${request.statusText}`);
    });
    request.addEventListener("error", () => finish(false, "The upload did not reach the server."));
    request.send(form);
  });
}
