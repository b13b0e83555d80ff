// Models: each model's versions, the share of traffic each takes, requests/s, p50/p99, and the
// actions (promote, roll back, weights), each confirmed before it is sent.
import { get, post, enc } from "../api.js";
import { LiveChart } from "../charts.js";
import { h, table, pill, fmt, pct, clear } from "../dom.js";

const HISTORY_S = 300;
let root, cards, samples, charts, actionKeys;

function rates(name, at, versions) {
  // requests/s per version between this read and the previous one
  const key = name, prev = samples.get(key);
  const now = { at, counts: Object.fromEntries(versions.map(v => [v.version, v.requests])), series: prev ? prev.series : [] };
  const out = {};
  for (const v of versions) {
    out[v.version] = prev && at > prev.at && v.version in prev.counts
      ? Math.max(0, (v.requests - prev.counts[v.version]) / (at - prev.at)) : null;
  }
  now.series = [...now.series, { at, rates: out }].filter(s => s.at >= at - HISTORY_S);
  samples.set(key, now);
  return { current: out, series: now.series };
}

async function act(ctx, title, text, path, body) {
  if (!(await ctx.confirm(title, text))) { ctx.say("cancelled"); return; }
  try {
    const result = await post(path, body);
    const moves = result && result.alias_moves;
    ctx.say(moves ? `${title}: done; alias moves ${moves.map(m => `${m.alias} -> v${m.version}`).join(", ") || "none needed"}; `
      + "the server follows the registry within its poll interval" : `${title}: done`);
  } catch (e) {
    ctx.say(`${title} failed: ${e.message}`, true);
  }
  ctx.refresh();
}

function actions(ctx, model) {
  const serving = model.versions.filter(v => v.weight > 0);
  const inputs = {};
  const weightRows = model.versions.map(v => {
    inputs[v.version] = h("input", { type: "number", min: 0, step: 1, value: Math.round(100 * v.weight),
                                     "data-weight": v.version, disabled: model.follows_registry });
    return h("label", {}, `v${v.version} `, inputs[v.version], " %");
  });
  const setWeights = h("button", { "data-action": "weights", disabled: model.follows_registry, onclick: () => {
    const weights = Object.fromEntries(Object.entries(inputs).map(([v, el]) => [v, Number(el.value) || 0]));
    const text = Object.entries(weights).map(([v, w]) => `v${v}: ${w}`).join(", ");
    act(ctx, "Set traffic weights", `Route ${model.name}'s traffic as ${text}?`, `/v2/models/${enc(model.name)}/traffic`, { weights });
  } }, "Set weights");
  const promotes = model.versions.map(v => h("button", {
    class: "primary", "data-action": "promote", "data-version": v.version,
    disabled: serving.length === 1 && serving[0].version === v.version,
    onclick: () => act(ctx, `Promote v${v.version}`,
      `Send all of ${model.name}'s traffic to version ${v.version}?` + (model.follows_registry
        ? ` The registry aliases of ${model.source} move to v${v.version} (kept in the alias history).` : ""),
      `/ui/api/models/${enc(model.name)}/promote`, { version: v.version }),
  }, `Promote v${v.version}`));
  const rollback = h("button", { class: "danger", "data-action": "rollback", onclick: () => act(ctx, "Roll back",
    model.follows_registry
      ? `Roll back ${model.name}? A canary is ended (put back on the main alias); with no canary, the main alias of ${model.source} goes back one move.`
      : `Send all of ${model.name}'s traffic back to its stable version v${model.stable}?`,
    `/ui/api/models/${enc(model.name)}/rollback`, {}) }, "Roll back");
  return h("div", { class: "card actions" }, h("h3", {}, "Actions"),
    h("div", { class: "controls" }, promotes, rollback),
    h("div", { class: "controls" }, weightRows, setWeights),
    h("p", { class: "note" }, model.follows_registry
      ? `Served from ${model.source}: traffic follows the registry aliases (weights come from the canary split), so promote and roll back move aliases.`
      : "Needs the management token when the server sets one."));
}

function versionsTable(model, current) {
  return table([
    { label: "version", value: v => `v${v.version}` },
    { label: "serving", value: v => v.weight > 0 ? pill(pct(v.weight), "serving") : v.shadow ? pill("shadow") : pill("idle") },
    { label: "share", value: v => h("div", { class: "bar" }, h("span", { style: `width:${100 * v.weight}%` })) },
    { label: "req/s", num: true, value: v => current[v.version] === null ? "…" : fmt(current[v.version], 3) },
    { label: "requests", num: true, value: v => fmt(v.requests) },
    { label: "failed", num: true, value: v => fmt(v.failed) },
    { label: "p50 ms", num: true, value: v => v.p50_ms === null ? "–" : "≤ " + fmt(v.p50_ms) },
    { label: "p99 ms", num: true, value: v => v.p99_ms === null ? "–" : "≤ " + fmt(v.p99_ms) },
    { label: "drift", value: v => !v.drift ? "off" : v.drift.alert ? pill("alert") : pill("quiet", "no drift") },
  ], model.versions, v => ({ "data-version": v.version }));
}

export default {
  pollSeconds: 2,
  enter(el) {
    root = el; cards = new Map(); samples = new Map(); charts = new Map(); actionKeys = new Map();
    root.append(h("h2", {}, "Models"), h("p", { class: "muted" },
      "Versions loaded, the share of traffic each answers, and their live request rate and latency (bucket bounds)."));
  },
  async refresh(ctx) {
    const { at, models } = await get("/ui/api/models");
    let firstRead = false;
    for (const model of models) {
      let card = cards.get(model.name);
      if (!card) {
        card = { stats: h("div"), actions: h("div"), chart: h("div", { class: "chart", "data-chart": "rps" }) };
        root.append(h("div", { class: "card model", "data-model": model.name },
          h("h3", {}, model.name, " ", h("span", { class: "muted" }, model.source)), card.stats,
          h("h3", { style: "margin-top:1em" }, "Requests/s per version"), card.chart), card.actions);
        charts.set(model.name, new LiveChart(card.chart, { yLabel: "requests/s", height: 220 }));
        cards.set(model.name, card);
      }
      const { current, series } = rates(model.name, at, model.versions);
      if (Object.values(current).every(r => r === null)) firstRead = true;
      clear(card.stats, versionsTable(model, current));
      const key = JSON.stringify(model.versions.map(v => [v.version, v.weight]));
      if (actionKeys.get(model.name) !== key) {  // rebuilt only when versions or weights change
        actionKeys.set(model.name, key);
        clear(card.actions, actions(ctx, model));
      }
      const versions = model.versions.map(v => v.version);
      const points = series.filter(s => Object.values(s.rates).some(r => r !== null));
      if (points.length) {
        charts.get(model.name).update(versions.map(v => `v${v}`),
          [points.map(s => s.at), ...versions.map(v => points.map(s => s.rates[v] ?? null))]);
      }
    }
    // Requests/s takes two reads: the second comes soon after the first, not a poll later.
    if (firstRead) setTimeout(() => ctx.refresh(), 500);
  },
};
