// Runs: params and final metrics, metric curves over steps, two runs side by side.
import { get, enc } from "../api.js";
import { LiveChart } from "../charts.js";
import { h, table, pill, fmt, isoTime, clear } from "../dom.js";

let els, chosen, key;

const cell = x => (x === undefined || x === null ? "–" : typeof x === "object" ? JSON.stringify(x) : fmt(x, 4));

async function compare() {
  const runs = await Promise.all(chosen.map(id => get(`/ui/api/runs/${enc(id)}`)));
  if (!runs.length) { clear(els.compare, h("p", { class: "muted" }, "Pick one run, or two to compare them.")); return; }
  const rows = (field) => [...new Set(runs.flatMap(r => Object.keys(r[field])))].sort().map(k => ({ k, values: runs.map(r => r[field][k]) }));
  const differs = r => new Set(r.values.map(v => JSON.stringify(v))).size > 1;
  const side = (field) => table([{ label: field, value: r => r.k },
    ...runs.map(run => ({ label: `run ${run.id.slice(0, 8)}`, num: true, value: r => cell(r.values[runs.indexOf(run)]) }))],
    rows(field), r => ({ class: runs.length > 1 && differs(r) ? "diff" : null, "data-key": r.k }));
  const curves = h("div", { class: "row" });
  clear(els.compare,
    h("div", { class: "row" }, h("div", { class: "card" }, h("h3", {}, "Params"), side("params")),
      h("div", { class: "card" }, h("h3", {}, "Final metrics"), side("metrics"))),
    runs.length > 1 ? h("p", { class: "note" }, "Highlighted: the values that differ.") : null,
    h("h3", {}, "Metric curves"), curves);
  const names = [...new Set(runs.flatMap(r => Object.keys(r.curves)))].sort();
  for (const name of names) {
    const el = h("div", { class: "chart", "data-chart": `curve-${name}` });
    curves.append(h("div", { class: "card" }, h("h3", {}, name), el));
    const tables = runs.map(r => { const c = r.curves[name] || []; return [c.map(p => p[0]), c.map(p => p[1])]; });
    new LiveChart(el, { yLabel: name, height: 220, time: false }).update(runs.map(r => `run ${r.id.slice(0, 8)}`), uPlot.join(tables));
  }
}

export default {
  pollSeconds: 10,
  enter(el) {
    const wanted = location.hash.split("/")[1];
    chosen = wanted ? [wanted] : []; key = "";
    els = { list: h("div", { "data-table": "runs" }), compare: h("div") };
    el.append(h("h2", {}, "Runs"), h("div", { class: "card" }, h("h3", {}, "Tracked runs (tick two to compare)"), els.list), els.compare);
  },
  async refresh() {
    const { runs } = await get("/ui/api/runs?limit=100");
    const nextKey = JSON.stringify(runs.map(r => [r.id, r.status, r.end_time]));
    if (nextKey === key) return;
    key = nextKey;
    if (!chosen.length && runs.length) chosen = runs.slice(0, 2).map(r => r.id);
    const pick = (id, on) => {
      chosen = on ? [...chosen.filter(c => c !== id), id].slice(-2) : chosen.filter(c => c !== id);
      for (const box of els.list.querySelectorAll("input[type=checkbox]")) box.checked = chosen.includes(box.dataset.run);
      compare();
    };
    clear(els.list, table([
      { label: "", value: r => h("input", { type: "checkbox", "data-run": r.id, checked: chosen.includes(r.id), onchange: e => pick(r.id, e.target.checked) }) },
      { label: "run", value: r => h("code", {}, r.id.slice(0, 12)) },
      { label: "experiment", value: r => r.experiment },
      { label: "status", value: r => pill(r.status) },
      { label: "started", value: r => isoTime(r.start_time) },
      { label: "data snapshot", value: r => r.data_snapshot ? h("code", {}, r.data_snapshot.slice(0, 12)) : "–" },
      { label: "metrics", value: r => Object.entries(r.metrics).slice(0, 4).map(([k, v]) => `${k} ${fmt(v)}`).join(", ") || "–" },
    ], runs, r => ({ "data-run": r.id })));
    await compare();
  },
};
