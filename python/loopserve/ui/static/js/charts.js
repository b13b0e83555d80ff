// uPlot charts: a time series chart that keeps its zoom across live updates, and bars.

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d",
                 "#7c3aed", "#ca8a04", "#0f766e", "#4b5563"];

export const color = i => PALETTE[i % PALETTE.length];

function width(el) {
  return Math.max(320, Math.floor(el.getBoundingClientRect().width) || 800);
}

// A single point (or a flat span) still gets a readable x range.
const padded = pad => (u, min, max) => (min === max ? [min - pad, max + pad] : [min, max]);

function firstChartDrawn() {
  // The page's first drawn chart, for bench/ui_first_chart.py.
  if (!document.body.dataset.firstChartMs) document.body.dataset.firstChartMs = String(performance.now());
}

// A chart whose series (by label) may change between updates; rebuilt only when they do.
export class LiveChart {
  constructor(el, { yLabel = "", height = 280, time = true, yRange = null, points = true } = {}) {
    Object.assign(this, { el, yLabel, height, time, yRange, points, plot: null, key: "" });
    // Follows its container's width (cards reflow as siblings are added and the window resizes).
    new ResizeObserver(() => {
      if (this.plot && Math.abs(this.plot.width - width(el)) > 1) this.plot.setSize({ width: width(el), height });
    }).observe(el);
  }

  // data: [xs, ...ys]; labels: one per y series
  update(labels, data) {
    const key = labels.join("\u0000");
    if (this.plot && key === this.key) {
      this.plot.setData(data, true);
    } else {
      if (this.plot) this.plot.destroy();
      this.key = key;
      this.plot = new uPlot({
        width: width(this.el), height: this.height,
        scales: { x: { time: this.time, range: padded(this.time ? 30 : 1) }, y: this.yRange ? { range: this.yRange } : {} },
        axes: [this.time ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] },
               { label: this.yLabel, size: 60 }],
        series: [{ label: this.time ? "time" : "step" }, ...labels.map((label, i) => ({
          label, stroke: color(i), width: 1.6, spanGaps: true, points: { show: this.points, size: 5 } }))],
        legend: { live: true },
      }, data, this.el);
      this.el.dataset.series = labels.length;
    }
    this.el.dataset.points = data[0].length;
    firstChartDrawn();
  }
}

// Paired bars per category (reference against current, say).
export function barChart(el, categories, seriesLabels, values, { yLabel = "" } = {}) {
  el.replaceChildren();
  const xs = categories.map((_, i) => i);
  const n = seriesLabels.length;
  const bars = uPlot.paths.bars;
  const plot = new uPlot({
    width: width(el), height: 300,
    scales: { x: { time: false, range: [-0.6, categories.length - 0.4] }, y: { range: (u, lo, hi) => [0, hi * 1.1 || 1] } },
    axes: [
      { values: (u, splits) => splits.map(v => (Number.isInteger(v) ? categories[v] ?? "" : "")), rotate: -30,
        size: 80, gap: 4, space: 10, incrs: [1] },
      { label: yLabel, size: 60 },
    ],
    series: [{ label: "bin", value: (u, v) => (v === null ? "–" : categories[v]) }, ...seriesLabels.map((label, i) => ({
      label, fill: color(i) + "aa", stroke: color(i), width: 1,
      // Two series side by side: the first to the left of its category's tick, the second to the right.
      paths: bars({ size: [0.8 / n, 60], align: n === 2 ? (i === 0 ? -1 : 1) : 0 }),
      points: { show: false },
    }))],
  }, [xs, ...values], el);
  firstChartDrawn();
  return plot;
}
