// Live accuracy per version from ground-truth feedback, over time (one point per label window).
import { get, enc } from "../api.js";
import { LiveChart } from "../charts.js";
import { h, table, fmt, pct, time, clear } from "../dom.js";

let els, chart;

export default {
  pollSeconds: 2,
  enter(el) {
    els = { chart: h("div", { class: "chart", "data-chart": "accuracy" }), table: h("div", { "data-table": "accuracy" }), note: h("p", { class: "note" }) };
    el.append(h("h2", {}, "Live accuracy"),
      h("div", { class: "card" }, h("h3", {}, "Accuracy per label window, per version"), els.chart, els.note),
      h("div", { class: "card" }, h("h3", {}, "Per version"), els.table));
    chart = new LiveChart(els.chart, { yLabel: "accuracy", height: 320 });
  },
  async refresh(ctx) {
    const report = await get(`/v2/models/${enc(ctx.model())}/feedback?windows=all`);
    const versions = report.versions.filter(v => v.cumulative.labels > 0);
    if (!versions.length) { clear(els.note, "No labels yet: POST /v2/models/{model}/feedback sends them."); return; }
    // One series per version on a shared time axis (uPlot.join fills the gaps with nulls).
    const tables = versions.map(v => {
      const points = [...v.windows, ...(v.current.labels ? [v.current] : [])].filter(w => w.accuracy !== null);
      return [points.map(w => w.end), points.map(w => w.accuracy)];
    });
    chart.update(versions.map(v => `v${v.version}`), uPlot.join(tables));
    clear(els.note, `Each point is a window of ${fmt(versions[0].window_labels)} labels (the last one still filling); `
      + `closed windows kept: the server's feedback.history.`);
    clear(els.table, table([
      { label: "version", value: v => `v${v.version}` },
      { label: "labels", num: true, value: v => fmt(v.cumulative.labels) },
      { label: "accuracy (all)", num: true, value: v => pct(v.cumulative.accuracy) },
      { label: "accuracy (last window)", num: true, value: v => pct((v.windows[v.windows.length - 1] || v.current).accuracy) },
      { label: "precision", num: true, value: v => pct(v.cumulative.precision) },
      { label: "recall", num: true, value: v => pct(v.cumulative.recall) },
      { label: "last label", value: v => time(v.current.end || v.cumulative.end) },
    ], versions, v => ({ "data-version": v.version })));
  },
};
