"""The demo's HTML report: drift per feature over time, live accuracy per version, which
versions served when, and the timeline; plots drawn with matplotlib, embedded as PNG."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from loopserve.demo.timeline import Series


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _mark(ax, drift_at: float | None, promoted_at: float | None) -> None:
    if drift_at is not None:
        ax.axvline(drift_at, color="tab:red", linestyle="--", linewidth=1, label="drift begins")
    if promoted_at is not None:
        ax.axvline(promoted_at, color="tab:green", linestyle="--", linewidth=1, label="v2 promoted")


def _legend_outside(ax, **kwargs) -> None:
    """The legend right of the plot, where it covers no data (savefig's tight box keeps it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, **kwargs)


def figures(series: Series, summary: dict, drift_at: float | None, promoted_at: float | None) -> list:
    """[(title, matplotlib figure)] of the report, each legend outside its plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(9, 4))
    features = sorted({name for w in series.drift for name in w["psi"]})
    for name in features:
        points = [(w["t"], w["psi"].get(name)) for w in series.drift if w["psi"].get(name) is not None]
        if points:
            ax.plot(*zip(*points), marker=".", linewidth=1, label=name)
    drifted = [w["t"] for w in series.drift if w["verdict"] == "drift"]
    if drifted:
        ax.scatter(drifted, [0] * len(drifted), marker="^", color="tab:red", zorder=5, label="window verdict: drift")
    _mark(ax, drift_at, promoted_at)
    ax.set(xlabel="seconds", ylabel="PSI vs the serving version's reference", title="Drift per feature, per window")
    _legend_outside(ax, fontsize=8)
    out.append(("Drift per feature over time", fig))

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for version, points in sorted(series.accuracy.items()):
        if points:
            t, acc, _ = zip(*points)
            ax.plot(t, acc, marker=".", label=f"v{version}")
    _mark(ax, drift_at, promoted_at)
    ax.set(xlabel="seconds", ylabel="accuracy (latest label window)", title="Live accuracy per version, from feedback")
    _legend_outside(ax, fontsize=8)
    out.append(("Live accuracy per version", fig))

    fig, ax = plt.subplots(figsize=(9, 2.8))
    versions = sorted({v for _, w in series.weights for v in w}, key=int)
    end = max([t for t, _ in series.weights] + [summary.get("seconds", 0)])
    for i, (t, weights) in enumerate(series.weights):
        until = series.weights[i + 1][0] if i + 1 < len(series.weights) else end
        for v, share in weights.items():
            ax.barh(f"v{v}", until - t, left=t, height=0.5 * share + 0.1, color=f"C{versions.index(v)}")
    _mark(ax, drift_at, promoted_at)
    ax.set(xlabel="seconds", title="Which version served (bar height: share of traffic)")
    out.append(("Versions serving", fig))
    return out


def write_report(path: Path, series: Series, summary: dict, drift_at: float | None,
                 promoted_at: float | None) -> Path:
    import matplotlib.pyplot as plt

    images = []
    for title, fig in figures(series, summary, drift_at, promoted_at):
        images.append((title, _png(fig)))
        plt.close(fig)

    rows = "".join(f"<tr><td>{t:.1f}</td><td>{html.escape(m)}</td></tr>" for t, m in series.events)
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    plots = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>" for title, data in images)
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>loopserve closed-loop demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>loopserve: the closed loop</h1><table>{facts}</table>{plots}
<h2>Timeline</h2><table><tr><th>s</th><th>event</th></tr>{rows}</table></body></html>""")
    return path
