// Registry: versions with their lineage (run -> data snapshot -> parent version) and every move
// of every alias, with "which version did this alias name at time T".
import { get } from "../api.js";
import { h, table, pill, fmt, isoTime, clear } from "../dom.js";

let root, shown;

function lineage(v) {
  const parts = [];
  parts.push(v.run_id ? h("a", { href: `#runs/${v.run_id}` }, `run ${v.run_id.slice(0, 8)}`) : h("span", { class: "muted" }, "no run"));
  if (v.experiment) parts.push(h("span", { class: "muted" }, ` (${v.experiment})`));
  parts.push(" → ", v.data_snapshot ? h("code", { title: v.data_snapshot }, `snapshot ${v.data_snapshot.slice(0, 12)}`) : h("span", { class: "muted" }, "no snapshot"));
  parts.push(" → ", v.parent_version ? `parent v${v.parent_version}` : h("span", { class: "muted" }, "no parent"));
  return h("span", { "data-lineage": v.version }, parts);
}

function aliasAt(history, alias, when) {
  let version = null;
  for (const e of history) if (e.alias === alias && new Date(e.set_at) <= when) version = e.version;
  return version;
}

function modelCard(model) {
  const aliases = [...new Set(model.alias_history.map(e => e.alias))];
  const answer = h("span", { class: "big", "data-answer": "alias-at" }, "–");
  const aliasSelect = h("select", {}, aliases.map(a => h("option", { value: a }, a)));
  const whenInput = h("input", { type: "datetime-local", step: 1 });
  const ask = () => {
    const when = whenInput.value ? new Date(whenInput.value) : new Date();
    const v = aliasAt(model.alias_history, aliasSelect.value, when);
    answer.textContent = v === null ? "not set yet" : `v${v}`;
  };
  aliasSelect.onchange = ask; whenInput.onchange = ask; ask();
  return h("div", { class: "card", "data-model": model.name },
    h("h3", {}, model.name, " ", Object.entries(model.aliases).map(([a, v]) => [pill(`${a}: v${v}`, "serving"), " "])),
    table([
      { label: "version", value: v => `v${v.version}` },
      { label: "aliases", value: v => v.aliases.map(a => [pill(a), " "]) },
      { label: "lineage: run → data → parent", value: lineage },
      { label: "metrics", value: v => Object.entries(v.metrics).map(([k, x]) => `${k} ${fmt(x)}`).join(", ") || "–" },
      { label: "registered", value: v => isoTime(v.created_at) },
    ], model.versions.slice().reverse(), v => ({ "data-version": v.version })),
    h("h3", { style: "margin-top:1.2em" }, "Alias history"),
    table([
      { label: "when", value: e => isoTime(e.set_at) },
      { label: "alias", value: e => e.alias },
      { label: "move", value: e => `${e.previous_version ? "v" + e.previous_version : "unset"} → v${e.version}` },
      { label: "action", value: e => pill(e.action) },
      { label: "by", value: e => e.actor || "–" },
      { label: "reason", value: e => e.reason || "–" },
    ], model.alias_history.slice().reverse(), e => ({ "data-alias-move": e.alias })),
    h("div", { class: "controls", style: "margin-top:1em" }, "Which version did ", aliasSelect, " name at ", whenInput, "? ", answer,
      h("span", { class: "muted" }, "(empty time: now)")));
}

export default {
  pollSeconds: 10,
  enter(el) { root = el; shown = null; },
  async refresh() {
    const { store, models } = await get("/ui/api/registry");
    // Rebuilt only when something moved, so a question being asked is not wiped.
    const key = JSON.stringify(models.map(m => [m.name, m.versions.length, m.alias_history.length]));
    if (shown === key) return;
    shown = key;
    clear(root, h("h2", {}, "Registry"), h("p", { class: "muted" }, `store: ${store}`),
      models.length ? models.map(modelCard) : h("div", { class: "card muted" }, "No registered models."));
  },
};
