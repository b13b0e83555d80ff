"""Hardening (issue 12, point 8) of what the store leaves on disk: no half-written version from
`registry materialize --dest`, and no `.tmp-*` files left for good by a writer that was killed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from loopserve.cli import main
from loopserve.registry import get_version, register_model
from loopserve.store import Store
from loopserve.store.blobs import STALE_TMP_S


def test_materialize_dest_leaves_nothing_of_a_refused_version(tmp_path, capsys):
    """The artifacts were copied one by one into --dest: the first landed, the second was
    refused (its blob altered), and half a version stayed there."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"weights" * 100)
    (src / "sub" / "config.json").write_text('{"max_batch_size": 8}')
    store_dir = tmp_path / "store"
    with Store(str(store_dir)) as store:
        register_model("fraud", src, store=store)
        artifacts = {a.path: a for a in get_version("fraud", 1, store=store).artifacts}
        blob = store.blobs.path(artifacts["sub/config.json"].sha256)
    assert sorted(artifacts) == ["model.onnx", "sub/config.json"]  # the good one is copied first
    blob.chmod(0o644)
    blob.write_text('{"max_batch_size": 9}')  # altered after registration
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("the operator's")
    assert main(["registry", "materialize", "fraud@1", "--dest", str(dest), "--store", str(store_dir)]) != 0
    assert "sub/config.json" in capsys.readouterr().err
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["keep.txt"]
    # A good version lands whole, beside what was there.
    blob.write_text('{"max_batch_size": 8}')
    assert main(["registry", "materialize", "fraud@1", "--dest", str(dest), "--store", str(store_dir)]) == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "keep.txt", "model.onnx", "sub/config.json"]


def test_a_writer_killed_mid_blob_leaves_no_tmp_file_for_good(tmp_path):
    """A SIGKILL mid-write left `.tmp-*` in the blob store forever; the next process to open the
    store removes those no writer has touched for STALE_TMP_S (a live writer touches its file
    with every chunk, so it is never one of them)."""
    fifo = tmp_path / "source"
    os.mkfifo(fifo)
    blobs = tmp_path / "store" / "blobs"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from loopserve.store.blobs import BlobStore
        BlobStore({str(blobs)!r}).put_file({str(fifo)!r})  # reads until the test kills it
    """)])
    try:
        with open(fifo, "wb") as source:
            source.write(b"x" * (1 << 20))
            source.flush()
            deadline = time.monotonic() + 60
            while not list(blobs.glob(".tmp-*")) or list(blobs.glob(".tmp-*"))[0].stat().st_size < 1 << 20:
                assert time.monotonic() < deadline and child.poll() is None, "the child never wrote"
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    (left,) = blobs.glob(".tmp-*")
    fresh = blobs / ".tmp-live-writer"
    fresh.write_bytes(b"y")
    old = time.time() - STALE_TMP_S - 60
    os.utime(left, (old, old))  # as it will be an hour on
    with Store(str(tmp_path / "store")):
        pass
    assert not left.exists() and fresh.exists()
