"""`loopserve demo --replicas 3`, shortened: three server processes on their own ports share one
lifecycle store (PostgreSQL here) and the traffic; each replica's drift windows are too small to
judge alone, the fleet's merged view detects the drift, the pipeline retrains on the rows of
every replica's spill directory (each row once), and the promotion reaches every replica."""

import dataclasses
import socket

from loopserve.demo import QUICK, run_closed_loop
from loopserve.store.local_postgres import find_bindir


def free_ports(n):
    """A run of n free consecutive ports (the fleet serves on port, port+1, ...)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n > 65535:
            continue
        sockets = []
        try:
            for p in range(port, port + n):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def test_the_fleet_demo_detects_on_the_merged_view_and_promotes_on_every_replica(tmp_path):
    lines = []
    port = free_ports(3)
    sizes = dataclasses.replace(QUICK, train_rows=8_000, holdout_rows=3_000, epochs=2, drift_at=2_000)
    summary = run_closed_loop(tmp_path, port, sizes, echo=lines.append, after_promotion_s=1.0, replicas=3)
    log = "\n".join(lines)
    replicas = [f"http://127.0.0.1:{p}" for p in range(port, port + 3)]

    assert summary["store"] == ("PostgreSQL" if find_bindir() else "SQLite"), log
    assert summary["failed requests"] == 0, summary["first failures"]
    assert summary["timeline errors"] == []
    assert summary["server exit status"] == 0
    assert summary["v2 promoted (s)"] is not None, log
    assert summary["drift detected (s)"] >= summary["drift begins (s)"], log
    assert summary["drift onset to promoted v2 (s)"] > 0

    # The fleet saw the drift while every replica, alone, had too few rows to judge any window.
    alone = summary["each replica alone at the fleet's first drift"]
    assert sorted(alone) == replicas, log
    for url, verdicts in alone.items():
        assert verdicts and all(v.startswith("insufficient data") for v in verdicts), (url, verdicts)
    assert any("DRIFT in" in line for line in lines), log

    # The traffic was spread over the three; each answered with v1, then with the promoted version
    # (v2; v3 where a loaded machine's p99 made v2's canary lose and the next run won); all serve
    # it alone now.
    promoted = summary["production at the end"]
    assert promoted >= 2, (summary["pipeline runs"], log)
    by_replica = summary["answered by replica"]
    assert sorted(by_replica) == replicas
    for url, versions in by_replica.items():
        assert {"1", str(promoted)} <= set(versions), (url, versions)
    assert summary["serving at the end"] == {url: {str(promoted): 1.0} for url in replicas}

    # v2 was trained and gated on labelled rows from every replica's spill directory, none twice.
    rows = summary["retrained on rows by replica"]
    assert sorted(rows) == replicas and sum(rows.values()) >= sizes.retrain_min_rows
    assert min(rows.values()) > sum(rows.values()) / 6, rows  # round-robin: about a third each
    assert summary["retrained on rows read twice"] == 0
    assert summary["retrained on rows not in the stream"] == 0
    for i in (1, 2, 3):
        assert any((tmp_path / "feedback" / f"replica-{i}" / "fraud").glob("labels-*.jsonl"))
    assert (tmp_path / "report.html").is_file()
