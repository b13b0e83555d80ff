"""Traffic for the closed-loop demo: clients send the fraud stream's rows, in order, at a set
pace, one row per request (the request id names the row, its age band rides along as the
`group` parameter); a labeller sends each row's true label back later, as a bank's chargebacks
would: after a fixed delay, or after each row's own delay (infinite: never labelled).

Given several ports (a fleet's replicas), row r goes to replica r mod n, as a round-robin load
balancer spreads it, and its label goes back to the replica that answered it."""

from __future__ import annotations

import heapq
import http.client
import math
import threading
import time
from collections import Counter

import msgspec
import numpy as np


class Traffic:
    """Runs until stop(); thread-safe counters for the timeline."""

    def __init__(self, port: int | list[int], model: str, features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                 input_name: str, rows_per_s: float, label_delay_s: float | np.ndarray, clients: int = 4):
        """`label_delay_s`: seconds from a row's answer to its label, one for all rows or one per
        row (inf: never labelled). `port`: the server's, or the replicas' (a list)."""
        self.ports = [port] if isinstance(port, int) else list(port)
        self.model, self.input_name = model, input_name
        self.features, self.labels, self.groups = features, labels, groups
        self.interval = 1.0 / rows_per_s
        self.label_delays = np.broadcast_to(np.asarray(label_delay_s, np.float64), labels.shape)
        self.clients = clients
        self._lock = threading.Lock()
        self._next_row = 0
        self._start = 0.0
        self._stop = threading.Event()
        self.sent = 0
        self.failed: list[str] = []
        self.by_version: Counter[str] = Counter()
        self.by_replica: dict[int, Counter[str]] = {p: Counter() for p in self.ports}  # port -> answers by version
        self.labels_sent = 0
        self.labels_withheld = 0  # rows answered whose label never comes
        self.label_answers: Counter[str] = Counter()
        self.answered_at = np.full(len(labels), np.nan)  # per row: when its answer came (unix seconds)
        self._to_label: list[tuple[float, int]] = []  # heap of (label due, monotonic; row)
        self._threads: list[threading.Thread] = []

    @property
    def row(self) -> int:
        """The next stream row to be sent."""
        return self._next_row

    def start(self) -> None:
        self._start = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self._threads.append(threading.Thread(target=self._labeller, daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _take_row(self) -> int | None:
        with self._lock:
            row = self._next_row
            if row >= len(self.labels):
                return None
            self._next_row += 1
        due = self._start + row * self.interval  # paced: row r goes at start + r / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return row

    def _port_of(self, row: int) -> int:
        return self.ports[row % len(self.ports)]

    def _client(self) -> None:
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in self.ports}
        path = f"/v2/models/{self.model}/infer"
        while not self._stop.is_set():
            row = self._take_row()
            if row is None:
                break
            port = self._port_of(row)
            conn = conns[port]
            body = msgspec.json.encode({
                "id": f"r{row}", "parameters": {"group": int(self.groups[row])},
                "inputs": [{"name": self.input_name, "shape": [1, self.features.shape[1]], "datatype": "FP32",
                            "data": self.features[row].tolist()}]})
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    with self._lock:
                        self.failed.append(f"row {row}: HTTP {resp.status} {data[:200]!r}")
                    continue
                version = msgspec.json.decode(data)["model_version"]
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.failed.append(f"row {row}: {type(e).__name__}: {e}")
                conn.close()
                conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            with self._lock:
                self.sent += 1
                self.by_version[version] += 1
                self.by_replica[port][version] += 1
                self.answered_at[row] = time.time()
                delay = self.label_delays[row]
                if math.isfinite(delay):
                    heapq.heappush(self._to_label, (time.monotonic() + delay, row))
                else:
                    self.labels_withheld += 1
        for conn in conns.values():
            conn.close()

    def _labeller(self) -> None:
        conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in self.ports}
        path = f"/v2/models/{self.model}/feedback"
        while not self._stop.wait(0.1):
            now = time.monotonic()
            due: dict[int, list[int]] = {}
            with self._lock:
                while self._to_label and self._to_label[0][0] <= now:
                    row = heapq.heappop(self._to_label)[1]
                    due.setdefault(self._port_of(row), []).append(row)
            for port, batch in due.items():
                body = msgspec.json.encode({"labels": [{"id": f"r{r}", "label": int(self.labels[r])} for r in batch]})
                try:
                    conns[port].request("POST", path, body=body, headers={"Content-Type": "application/json"})
                    resp = conns[port].getresponse()
                    answer = msgspec.json.decode(resp.read())
                except (OSError, http.client.HTTPException, msgspec.DecodeError):
                    conns[port].close()
                    conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                with self._lock:
                    self.labels_sent += len(batch)
                    for status in ("joined", "unknown", "duplicate", "expired", "invalid"):
                        self.label_answers[status] += int(answer.get(status, 0))
        for conn in conns.values():
            conn.close()
