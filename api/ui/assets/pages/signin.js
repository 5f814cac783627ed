// Sign in by pasting an API key. The key is checked against the server before it is kept.

import { ApiError, api, signIn } from "../api.js";
import { fill, h } from "../dom.js";

export function renderSignIn(main, { message, onSignedIn }) {
  const input = h("input#api-key", {
    type: "password",
    name: "api-key",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "lq-…",
    required: true,
    "aria-describedby": "sign-in-help",
  });
  const status = h("p.form-message", { role: "status", "aria-live": "polite" });
  const button = h("button.button.primary", { type: "submit" }, "Sign in");
  const show = (kind, text) => {
    status.className = `form-message ${kind}`;
    status.textContent = text;
  };
  if (message) show(message.kind, message.text);

  const form = h(
    "form.signin-card",
    { "aria-labelledby": "sign-in-title" },
    h("div.signin-logo", {}, logo()),
    h("h1#sign-in-title", {}, "Sign in to loraq"),
    h(
      "p#sign-in-help.muted",
      {},
      "Paste an API key. ",
      h("code", {}, "loraq up"),
      " prints one (it is also saved in ",
      h("code", {}, "loraq-data/api_key"),
      "); an operator makes more with ",
      h("code", {}, "loraq keys create"),
      ". The key stays in this tab only.",
    ),
    h("label", { for: "api-key" }, "API key"),
    input,
    status,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return show("error", "Paste a key first.");
    button.disabled = true;
    show("info", "Checking the key…");
    try {
      await api("/v1/fine_tuning/jobs?limit=1", { key });
      signIn(key);
      onSignedIn();
    } catch (error) {
      const text =
        error instanceof ApiError && error.status === 401
          ? `${error.message} Check the key and try again.`
          : error.message;
      show("error", text);
      button.disabled = false;
      input.select();
    }
  });
  document.title = "Sign in · loraq";
  fill(main, h("div.signin", {}, form));
  input.focus();
}

function logo() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 32 32");
  svg.setAttribute("width", "40");
  svg.setAttribute("height", "40");
  svg.setAttribute("aria-hidden", "true");
  svg.innerHTML =
    '<rect width="32" height="32" rx="8" fill="#1e293b"/><path d="M8 22 L13 14 L18 18 L24 9" stroke="#60a5fa" stroke-width="2.5" fill="none" stroke-linecap="round" stroke-linejoin="round"/>';
  return svg;
}
