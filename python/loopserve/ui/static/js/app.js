// The page shell: hash routes to pages, the model picker, the token, polling, confirmations.
import { get } from "./api.js";
import { h } from "./dom.js";
import models from "./pages/models.js";
import drift from "./pages/drift.js";
import accuracy from "./pages/accuracy.js";
import registry from "./pages/registry.js";
import runs from "./pages/runs.js";
import pipeline from "./pages/pipeline.js";

const PAGES = { models, drift, accuracy, registry, runs, pipeline };
const pageEl = document.getElementById("page");
const modelSelect = document.getElementById("model");
const tokenInput = document.getElementById("token");
let current = null;   // { name, page }
let timer = null;

export const ctx = {
  model: () => modelSelect.value,
  say(message, isError = false) {
    const el = document.getElementById("status");
    el.textContent = message;
    el.classList.toggle("error", isError);
  },
  // Resolves true when the user confirms `text` in the dialog.
  confirm(title, text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    return new Promise(resolve => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
    });
  },
  refresh: () => tick(),
};

async function loadModels() {
  try {
    const { models: list } = await get("/ui/api/models");
    const names = list.map(m => m.name);
    const chosen = modelSelect.value || sessionStorage.getItem("loopserve.model") || names[0];
    modelSelect.replaceChildren(...names.map(n => h("option", { value: n }, n)));
    if (names.includes(chosen)) modelSelect.value = chosen;
  } catch (e) {
    ctx.say(`cannot list models: ${e.message}`, true);
  }
}

async function tick() {
  if (!current) return;
  const shown = current;
  try {
    await shown.page.refresh(ctx);
    if (shown === current) document.body.dataset.updated = String(Date.now());
  } catch (e) {
    ctx.say(`${shown.name}: ${e.message}`, true);
  }
}

async function show() {
  const name = (location.hash || "#models").slice(1).split("/")[0];
  const page = PAGES[name] || models;
  if (current && current.page.leave) current.page.leave();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  current = { name, page };
  document.body.dataset.page = name;
  delete document.body.dataset.updated;  // set again once this page has read its data
  ctx.say("");
  pageEl.replaceChildren();
  page.enter(pageEl, ctx);
  clearInterval(timer);
  await tick();
  timer = setInterval(tick, (page.pollSeconds || 2) * 1000);
}

tokenInput.value = sessionStorage.getItem("loopserve.token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("loopserve.token", tokenInput.value));
modelSelect.addEventListener("change", () => { sessionStorage.setItem("loopserve.model", modelSelect.value); show(); });
window.addEventListener("hashchange", show);
await loadModels();
show();
