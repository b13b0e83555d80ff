// Pipeline: its runs with their steps and durations, and the evidence the trigger fired on.
import { get } from "../api.js";
import { h, table, pill, fmt, pct, time, duration, clear } from "../dom.js";

let root, shown;

function evidence(trigger) {
  if (!trigger) return h("span", { class: "muted" }, "started by hand (no trigger decision)");
  const e = trigger.evidence;
  // drift_windows: [start, end, verdict]; accuracy_windows: complete prediction-time windows [start, end, accuracy, labels]
  const verdicts = (e.drift_windows || []).map(w => w[2]);
  const accuracy = (e.accuracy_windows || []).slice(-1)[0];
  return h("div", {},
    h("ul", { class: "reasons" }, trigger.reasons.map(r => h("li", {}, r))),
    h("div", { class: "muted", style: "font-size:0.88em" },
      `decided ${time(trigger.at)}: last verdicts ${verdicts.join(", ") || "–"}; `
      + `drifted ${(e.drifted_features || []).join(", ") || "–"}; live accuracy `
      + (accuracy ? `${pct(accuracy[2])} over ${fmt(accuracy[3])} labels (latest complete window)` : "–")
      + (e.since ? `; change point ${time(e.since)}` : "")));
}

function stepDetail(step) {
  const lines = Object.entries(step.detail).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return lines.length ? h("pre", { class: "detail" }, lines.join("\n")) : null;
}

function runCard(run) {
  return h("div", { class: "card", "data-pipeline-run": run.id },
    h("h3", {}, `run ${run.id} `, pill(run.status), " ", h("span", { class: "muted" }, `${run.model}, ${time(run.started_at)}, `
      + (run.finished_at ? `took ${duration(run.finished_at - run.started_at)}` : "running"))),
    run.outcome ? h("p", {}, run.outcome) : null,
    h("h3", {}, "Trigger"), evidence(run.trigger),
    h("h3", { style: "margin-top:0.8em" }, "Steps"),
    table([
      { label: "step", value: s => s.step },
      { label: "status", value: s => pill(s.status) },
      { label: "took", num: true, value: s => s.finished_at ? duration(s.finished_at - s.started_at) : "–" },
      { label: "detail", value: stepDetail },
    ], run.steps, s => ({ "data-step": s.step })));
}

export default {
  pollSeconds: 5,
  enter(el) { root = el; shown = null; },
  async refresh() {
    const { runs } = await get("/ui/api/pipeline?limit=20");
    const key = JSON.stringify(runs.map(r => [r.id, r.status, r.steps.map(s => s.status)]));
    if (shown === key) return;
    shown = key;
    clear(root, h("h2", {}, "Pipeline"),
      runs.length ? runs.map(runCard) : h("div", { class: "card muted" }, "No pipeline runs yet."));
  },
};
