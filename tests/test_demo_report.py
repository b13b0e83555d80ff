"""The demo's static report: every legend sits outside its plot, so it covers no data."""

from loopserve.demo.report import figures, write_report
from loopserve.demo.timeline import Series


def series_like_the_demo() -> Series:
    s = Series()
    names = ["amount", "account_age_days", "distance_km", "hour", "merchant_risk", "txn_velocity", "score0", "score1"]
    for i in range(40):
        t = 2.5 * i
        drifting = 20 <= t < 70  # drift begins at 20 s; v2 (trained on the new world) serves from 70 s
        s.drift.append({"t": t, "verdict": "drift" if drifting else "no drift", "version": "1" if t < 70 else "2",
                        "psi": {n: (1.5 if drifting and n == "amount" else 0.02) + 0.001 * j for j, n in enumerate(names)}})
    s.accuracy = {"1": [(t, 0.9 if t < 20 else 0.7, 100 * t) for t in range(0, 70, 5)],
                  "2": [(t, 0.92, 100 * t) for t in range(55, 100, 5)]}
    s.weights = [(0.0, {"1": 1.0}), (55.0, {"1": 0.7, "2": 0.3}), (70.0, {"2": 1.0})]
    s.events = [(20.0, "the world drifts"), (70.0, "pipeline run: promoted")]
    return s


def test_legends_cover_no_data(tmp_path):
    import matplotlib.pyplot as plt

    for title, fig in figures(series_like_the_demo(), {"seconds": 100}, 20.0, 70.0):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                box, plot = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
                assert box.x0 >= plot.x1, f"{title}: the legend overlaps the plot"
        plt.close(fig)
    report = write_report(tmp_path / "report.html", series_like_the_demo(), {"seconds": 100}, 20.0, 70.0)
    assert report.read_text().count("data:image/png;base64,") == 3
