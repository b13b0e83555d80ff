"""The web UI at /ui: static pages (plain JS modules and uPlot, vendored under static/vendor)
and the read models behind the JSON routes they poll (see loopserve.server.ui_routes)."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
