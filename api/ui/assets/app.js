// The dashboard: a router over three pages (jobs, one job, files) and the sign-in form in front of them.
// Addresses are real paths (/ui/jobs/ftjob-...), so a page can be bookmarked and reloaded; the server answers
// every /ui/ path with this same page.

import { apiKey, onUnauthorized, signOut } from "./api.js";
import { fill, h, notice } from "./dom.js";
import { renderFiles } from "./pages/files.js";
import { renderJob } from "./pages/job.js";
import { renderJobs } from "./pages/jobs.js";
import { renderSignIn } from "./pages/signin.js";

const main = document.getElementById("main");
let cleanup = () => {};

const ROUTES = [
  { pattern: /^\/ui\/?$/, nav: "jobs", render: renderJobs },
  { pattern: /^\/ui\/jobs\/?$/, nav: "jobs", render: renderJobs },
  { pattern: /^\/ui\/jobs\/([A-Za-z0-9_-]+)\/?$/, nav: "jobs", render: renderJob },
  { pattern: /^\/ui\/files\/?$/, nav: "files", render: renderFiles },
];

export function navigate(path, { replace = false } = {}) {
  if (path !== location.pathname + location.search) {
    history[replace ? "replaceState" : "pushState"](null, "", path);
  }
  route();
}

function route(message = null) {
  // message: {kind: "info" | "error", text}, shown on the sign-in form
  cleanup();
  cleanup = () => {};
  window.scrollTo(0, 0);
  const signedIn = Boolean(apiKey());
  document.body.classList.toggle("signed-in", signedIn);
  if (!signedIn) {
    setNav(null);
    document.title = "Sign in · loraq";
    renderSignIn(main, { message, onSignedIn: () => route() });
    return;
  }
  const path = location.pathname;
  for (const { pattern, nav, render } of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    setNav(nav);
    cleanup = render(main, { params: match.slice(1), navigate }) || (() => {});
    return;
  }
  setNav(null);
  document.title = "Not found · loraq";
  fill(
    main,
    notice(
      "empty",
      "No such page",
      `Nothing lives at ${path}.`,
      h("a.button", { href: "/ui/", "data-link": true }, "Go to jobs"),
    ),
  );
}

function setNav(active) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === active);
    if (link.dataset.nav === active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// In-app links: <a href="/ui/..." data-link> changes the page without reloading (a modified click still opens
// a new tab).
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});

window.addEventListener("popstate", () => route());

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  route({ kind: "info", text: "Signed out." });
});

// A key the server refuses (revoked since sign-in) sends the user back to the form, saying why.
onUnauthorized((error) => {
  signOut();
  route({ kind: "error", text: `${error.message} Sign in again.` });
});

route();
