// A confirmation dialog (the native <dialog>, modal): resolves true when the action is confirmed.

import { h } from "../dom.js";

export function confirmAction(title, text, actionLabel) {
  return new Promise((resolve) => {
    const confirm = h("button.button.danger", { type: "submit", value: "yes" }, actionLabel);
    const dialog = h(
      "dialog.dialog",
      { "aria-labelledby": "dialog-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2#dialog-title", {}, title),
        h("p", {}, text),
        h("div.dialog-actions", {}, h("button.button", { type: "submit", value: "no" }, "Keep it"), confirm),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    confirm.focus();
  });
}
