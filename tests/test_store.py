"""The store's foundation: atomic content-addressed blobs, SQLite transactions, names."""

import multiprocessing as mp

import pytest

from loopserve.store import BlobStore, IntegrityError, Store, store_root, transaction, validate_name
from loopserve.store.db import ensure_schema
from loopserve.store.names import InvalidName


def test_blob_round_trip_and_dedup(tmp_path):
    blobs = BlobStore(tmp_path)
    a = blobs.put_bytes(b"hello")
    assert blobs.put_bytes(b"hello") == a
    assert blobs.read_bytes(a) == b"hello"
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    assert blobs.put_file(src) == a
    assert not list(blobs.root.rglob(".tmp-*"))


def test_tampered_and_truncated_blobs_are_refused(tmp_path):
    blobs = BlobStore(tmp_path)
    digest = blobs.put_bytes(b"x" * 1000)
    path = blobs.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"x" * 999)
    with pytest.raises(IntegrityError, match="modified or truncated"):
        blobs.read_bytes(digest)
    with pytest.raises(IntegrityError, match="modified or truncated"):
        blobs.verify(digest)
    path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        blobs.verify(digest)
    with pytest.raises(IntegrityError, match="not a sha256"):
        blobs.path("../../etc/passwd")


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", "a\x00b", "a\nb", ".hidden", "x" * 129, "a..b"])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidName, match="expected 1-128 characters"):
        validate_name("model", name)


def test_good_names_pass():
    assert validate_name("model", "fraud-detector_v2.1") == "fraud-detector_v2.1"


def test_store_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPSERVE_STORE", str(tmp_path / "env"))
    assert store_root() == tmp_path / "env"
    assert store_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("LOOPSERVE_STORE")
    monkeypatch.chdir(tmp_path)
    assert store_root() == tmp_path / ".loopserve"


def _count_up(root, n):
    with Store(root) as store:
        for _ in range(n):
            with transaction(store.db):
                (last,) = store.db.execute("SELECT COALESCE(MAX(n), 0) FROM counter").fetchone()
                store.db.execute("INSERT INTO counter (n) VALUES (?)", (last + 1,))


def test_immediate_transactions_serialize_read_then_write_across_processes(tmp_path):
    with Store(tmp_path) as store:
        ensure_schema(store.db, "CREATE TABLE IF NOT EXISTS counter (n INTEGER PRIMARY KEY)")
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count_up, args=(tmp_path, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(tmp_path) as store:
        rows = [r[0] for r in store.db.execute("SELECT n FROM counter ORDER BY n")]
    assert rows == list(range(1, 151))
