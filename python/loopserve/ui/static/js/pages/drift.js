// Drift: each feature's statistic over recent windows (live), each window's verdict and its
// reasons, and the reference against the current histogram of a chosen feature.
import { get, enc } from "../api.js";
import { LiveChart, barChart } from "../charts.js";
import { h, table, pill, fmt, time, clear } from "../dom.js";

const STATISTICS = { psi: "PSI", ks: "KS distance", js_distance: "JS distance", wasserstein: "Wasserstein",
                     missing_rate: "missing rate", mean: "mean" };
let els, chart, state;

function select(options, value, onchange, attrs = {}) {
  const el = h("select", { ...attrs, onchange: e => onchange(e.target.value) },
    Object.entries(options).map(([v, label]) => h("option", { value: v }, label)));
  el.value = value;
  return el;
}

async function drawHistogram(ctx) {
  if (!state.feature || !state.version) return;
  const data = await get(`/ui/api/models/${enc(ctx.model())}/histogram?feature=${enc(state.feature)}&version=${state.version}`);
  const w = data.window;
  clear(els.histogramNote, w ? `current: ${w.closed ? "last closed" : "open"} window from ${time(w.start)}, ${fmt(w.rows)} rows; `
    + `reference: the profile v${data.version} was trained against (${data.kind})` : "no window with rows yet");
  barChart(els.histogram, data.bins, ["reference", "current window"],
    [data.reference, data.current || data.reference.map(() => null)], { yLabel: "share of rows" });
}

export default {
  // The open window's statistics are made on each read (tens of ms of the server's CPU): every 5 s.
  pollSeconds: 5,
  enter(el, ctx) {
    state = { stat: "psi", windows: "30", version: null, feature: null, features: [] };
    els = {
      kpis: h("div", { class: "kpis" }), controls: h("div", { class: "controls" }),
      chart: h("div", { class: "chart", "data-chart": "drift" }), verdicts: h("div", { "data-table": "verdicts" }),
      histogram: h("div", { class: "chart", "data-chart": "histogram" }), histogramNote: h("p", { class: "note" }),
      histogramControls: h("div", { class: "controls" }),
    };
    el.append(h("h2", {}, "Drift"),
      h("div", { class: "card" }, els.kpis),
      h("div", { class: "card" }, els.controls, els.chart),
      h("div", { class: "row" },
        h("div", { class: "card" }, h("h3", {}, "Windows, newest first"), els.verdicts),
        h("div", { class: "card" }, h("h3", {}, "Reference against current"), els.histogramControls, els.histogram, els.histogramNote)));
    chart = new LiveChart(els.chart, { yLabel: STATISTICS.psi, height: 320 });
  },
  async refresh(ctx) {
    const { models } = await get("/ui/api/models");
    const model = models.find(m => m.name === ctx.model());
    const monitored = model ? model.versions.filter(v => v.drift) : [];
    if (!monitored.length) { clear(els.kpis, h("p", { class: "muted" }, "No drift monitor on this model's versions.")); return; }
    if (!monitored.some(v => String(v.version) === String(state.version))) {
      state.version = String((monitored.find(v => v.version === model.stable) || monitored[monitored.length - 1]).version);
    }
    // A fresh server makes each window's statistics once (tens of ms a window): the first read
    // asks for the last 10, drawn at once, and the rest follow straight after.
    const first = !state.read && Number(state.windows) > 10;
    state.read = true;
    const report = await get(`/v2/models/${enc(ctx.model())}/versions/${state.version}/drift?windows=${first ? 10 : state.windows}`);
    if (first) setTimeout(() => ctx.refresh(), 0);
    const windows = report.windows;
    const features = windows.length ? windows[windows.length - 1].features.map(f => f.name) : [];
    if (features.join() !== state.features.join() || !els.controls.childElementCount) {
      state.features = features;
      if (!features.includes(state.feature)) state.feature = features[0];
      clear(els.controls,
        h("label", {}, "version ", select(Object.fromEntries(monitored.map(v => [v.version, `v${v.version}`])), state.version,
          v => { state.version = v; ctx.refresh(); }, { "data-control": "version" })),
        h("label", {}, "statistic ", select(STATISTICS, state.stat, v => { state.stat = v; chart.yLabel = STATISTICS[v]; chart.key = ""; ctx.refresh(); },
          { "data-control": "statistic" })),
        h("label", {}, "windows ", select({ 10: "last 10", 30: "last 30", 100: "last 100", 200: "last 200" }, state.windows,
          v => { state.windows = v; ctx.refresh(); }, { "data-control": "windows" })));
      clear(els.histogramControls, h("label", {}, "feature ", select(Object.fromEntries(features.map(f => [f, f])), state.feature,
        v => { state.feature = v; drawHistogram(ctx); }, { "data-control": "feature" })));
    }
    const closed = windows.filter(w => w.closed);
    const last = closed[closed.length - 1];
    clear(els.kpis,
      h("div", {}, h("div", { class: "label" }, "alert (latest closed window)"), h("div", { class: "big", "data-kpi": "alert" },
        report.alert ? pill("drift") : pill("quiet", "no drift"))),
      h("div", {}, h("div", { class: "label" }, "version"), h("div", { class: "big" }, `v${report.version}`)),
      h("div", {}, h("div", { class: "label" }, "rows seen"), h("div", { class: "big" }, fmt(report.monitor.rows_seen))),
      h("div", {}, h("div", { class: "label" }, "windows closed"), h("div", { class: "big" }, fmt(report.monitor.windows_closed))),
      h("div", {}, h("div", { class: "label" }, "rows skipped"), h("div", { class: "big" }, fmt(report.monitor.rows_skipped))),
      h("div", {}, h("div", { class: "label" }, "drifted now"), h("div", {}, last && last.drifted_features.length ? last.drifted_features.join(", ") : "–")));
    // The open window joins the chart once it has enough rows for a verdict (a few rows are noise).
    const charted = windows.filter(w => w.closed || w.verdict !== "insufficient data");
    chart.update(features, [charted.map(w => w.end),
      ...features.map(name => charted.map(w => { const f = w.features.find(x => x.name === name); return f ? f[state.stat] ?? null : null; }))]);
    clear(els.verdicts, table([
      { label: "window", value: w => `${time(w.start)} – ${time(w.end)}${w.closed ? "" : " (open)"}` },
      { label: "rows", num: true, value: w => fmt(w.rows) },
      { label: "verdict", value: w => pill(w.verdict) },
      { label: "reasons", value: w => w.drifted_features.length
          ? h("ul", { class: "reasons" }, w.features.filter(f => f.drifted).map(f => h("li", {}, h("b", {}, f.name), ": ", f.reasons.join("; "))))
          : h("span", { class: "muted" }, w.verdict === "insufficient data" ? `fewer rows than the policy's minimum` : `${w.tests} tests, none significant`) },
    ], windows.slice().reverse().slice(0, 12), w => ({ "data-verdict": w.verdict })));
    await drawHistogram(ctx);
  },
};
