// A job's events as they happen: the Server-Sent Events stream (GET .../events?stream=true) read with fetch(),
// because EventSource cannot send the Authorization header; or, where the server answers that address with
// anything but a text/event-stream (a server without the stream), polling the newest-first list every 2 s.

import { api, authHeaders, errorOf } from "./api.js";

export const POLL_SECONDS = 2;
const RETRY_SECONDS = 2;
// A finished job can still get events (the worker reports where a cancelled run stopped): it is polled at the
// usual pace for this long after it finishes, then every FINISHED_POLL_SECONDS.
const LATE_EVENTS_SECONDS = 30;
const FINISHED_POLL_SECONDS = 10;

/**
 * An incremental text/event-stream parser (the WHATWG rules: lines end in LF, CR or CRLF; a blank line ends a
 * message; `:` starts a comment; one space after the colon is dropped; `data` lines join with LF).
 * push(text) returns the messages completed by that text: [{event, data, id}]; comments count in `comments`.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.skipLineFeed = false;
    this.lastEventId = "";
    this.comments = 0;
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  push(text) {
    const messages = [];
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i += 1) {
      const char = this.buffer[i];
      if (char !== "\n" && char !== "\r") continue;
      if (char === "\n" && this.skipLineFeed && i === start) {
        // the LF of a CRLF whose CR ended the previous line
        this.skipLineFeed = false;
        start = i + 1;
        continue;
      }
      this.skipLineFeed = char === "\r";
      this.line(this.buffer.slice(start, i), messages);
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return messages;
  }

  line(line, messages) {
    if (line === "") {
      if (this.data.length)
        messages.push({ event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId });
      this.reset();
      return;
    }
    if (line.startsWith(":")) {
      this.comments += 1;
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

/**
 * Follow a job's events. `onEvents(list)` gets new events oldest first, each once; `onEnd(job)` the job object
 * when the stream says the job has finished; `onMode(mode)` "connecting" | "stream" | "polling" |
 * "reconnecting" | "ended". Returns {stop(), mode(), setFinished()}. After the stream's `end`, and once the page
 * says the job has finished, late events are still picked up by polling the list, ever more slowly.
 */
export function followEvents(jobId, { onEvents, onEnd = () => {}, onMode = () => {}, onError = () => {} }) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events`;
  const seen = new Set();
  const controller = new AbortController();
  let mode = "connecting";
  let lastId = null;
  let finishedAt = null;
  let timer = null;

  const setMode = (next) => {
    mode = next;
    onMode(next);
  };
  const deliver = (events) => {
    const fresh = events.filter((event) => !seen.has(event.id));
    for (const event of fresh) seen.add(event.id);
    if (fresh.length) {
      lastId = fresh[fresh.length - 1].id;
      onEvents(fresh);
    }
  };
  const sleep = (seconds) =>
    new Promise((resolve) => {
      timer = setTimeout(resolve, seconds * 1000);
    });

  // ---------------------------------------------------------------- streaming
  async function stream() {
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(`${path}?stream=true`, { headers, signal: controller.signal, cache: "no-store" });
    const type = response.headers.get("content-type") || "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      // No stream here. A plain 200 is the list itself (the server ignored `stream`): its page is not wasted.
      if (response.status === 401) throw await errorOf(response);
      if (response.ok && type.startsWith("application/json") && !lastId) return { fallback: await response.json() };
      return { fallback: null };
    }
    setMode("stream");
    const parser = new SSEParser();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { ended: false };
      const batch = [];
      for (const message of parser.push(value)) {
        if (message.event === "end") {
          deliver(batch.splice(0));
          onEnd(JSON.parse(message.data));
          reader.cancel().catch(() => {});
          return { ended: true };
        }
        if (message.event === "message") batch.push(JSON.parse(message.data));
      }
      deliver(batch);
    }
  }

  // ---------------------------------------------------------------- polling
  async function pollOnce(firstPage = null) {
    // Newest first, page by page, until a page reaches an event already seen (or the oldest one).
    const collected = [];
    let page = firstPage;
    let after = null;
    for (;;) {
      if (!page) {
        const query = new URLSearchParams({ limit: "100" });
        if (after) query.set("after", after);
        page = await api(`${path}?${query}`, { signal: controller.signal });
      }
      collected.push(...page.data);
      const reachedSeen = page.data.some((event) => seen.has(event.id));
      if (reachedSeen || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
      page = null;
    }
    deliver(collected.reverse());
  }

  const pollInterval = () =>
    finishedAt !== null && Date.now() - finishedAt > LATE_EVENTS_SECONDS * 1000 ? FINISHED_POLL_SECONDS : POLL_SECONDS;

  async function poll(firstPage) {
    let page = firstPage;
    while (!controller.signal.aborted) {
      try {
        if (!document.hidden || page) await pollOnce(page);
      } catch (error) {
        if (controller.signal.aborted) return;
        onError(error);
      }
      page = null;
      await sleep(pollInterval());
    }
  }

  async function run() {
    while (!controller.signal.aborted) {
      let outcome;
      try {
        outcome = await stream();
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error.status === 401) return onError(error);
        setMode("reconnecting");
        await sleep(RETRY_SECONDS);
        continue;
      }
      if ("fallback" in outcome) {
        setMode("polling");
        return poll(outcome.fallback);
      }
      if (outcome.ended) {
        setMode("ended");
        finishedAt ??= Date.now();
        await sleep(POLL_SECONDS);
        return poll(null);
      }
      // The stream closed before the job ended (the server restarted): resume after the last event seen.
      setMode("reconnecting");
      await sleep(RETRY_SECONDS);
    }
  }

  run();
  return {
    stop() {
      controller.abort();
      clearTimeout(timer);
    },
    mode: () => mode,
    /** The job finished (at `when`, ms since the epoch). */
    setFinished(when = Date.now()) {
      finishedAt ??= when;
    },
  };
}
