"""The store's foundation: atomic content-addressed blobs, transactions on SQLite and PostgreSQL, names."""

import multiprocessing as mp
import socket
from pathlib import Path

import pytest

from loopserve.store import BlobStore, IntegrityError, Store, store_location, store_root, transaction, validate_name
from loopserve.store.db import ensure_schema
from loopserve.store.names import InvalidName
from loopserve.store.postgres import StoreConnectionError
from loopserve.store.root import split_postgres_url


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


def test_write_transactions_serialize_read_then_write_across_processes(store_location):
    with Store(store_location) as store:
        ensure_schema(store.db, "CREATE TABLE IF NOT EXISTS counter (n INTEGER PRIMARY KEY)")
        if store.dialect == "sqlite":
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count_up, args=(store_location, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # spawned processes start slowly on a loaded machine
        assert p.exitcode == 0
    with Store(store_location) as store:
        rows = [r[0] for r in store.db.execute("SELECT n FROM counter ORDER BY n")]
    assert rows == list(range(1, 151))


def test_a_store_location_is_a_directory_or_a_postgresql_url(tmp_path, monkeypatch):
    url = "postgresql://u:secret@db.example:5432/loopserve?dir=/shared/ls&sslmode=disable"
    monkeypatch.setenv("LOOPSERVE_STORE", url)
    assert store_location() == url
    assert store_root() == Path("/shared/ls")  # the blobs' directory
    assert split_postgres_url(url) == ("postgresql://u:secret@db.example:5432/loopserve?sslmode=disable",
                                       Path("/shared/ls"))
    monkeypatch.setenv("LOOPSERVE_STORE_DIR", str(tmp_path / "blobs"))
    assert split_postgres_url("postgres://h/db")[1] == tmp_path / "blobs"
    assert store_location(f"sqlite:///{tmp_path}/s") == tmp_path / "s"


def test_an_unreachable_postgresql_store_is_a_clear_error_without_the_password(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreConnectionError) as e:
        Store(f"postgresql://u:hunter2@127.0.0.1:{port}/x?dir={tmp_path}")
    assert "cannot open the store at postgresql://u:***@127.0.0.1" in str(e.value) and "hunter2" not in str(e.value)


def test_postgresql_rows_read_by_position_and_name_and_reals_stay_doubles(postgres_store_url):
    with Store(postgres_store_url) as store:
        ensure_schema(store.db, "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                                "x REAL NOT NULL, note TEXT)")
        store.db.executemany("INSERT INTO t (x, note) VALUES (?, ?)", [(0.1, "it's 100%"), (2.0**40 + 0.5, None)])
        store.db.executemany("INSERT INTO t (x, note) VALUES (?, ?)", [])
        rows = store.db.execute("SELECT * FROM t WHERE note IS NULL OR note LIKE '%?%' OR id = ? ORDER BY id",
                                (1,)).fetchall()
        assert [(r["id"], r["x"], r[2]) for r in rows] == [(1, 0.1, "it's 100%"), (2, 2.0**40 + 0.5, None)]
        assert store.db.columns("t") == {"id", "x", "note"}
        with pytest.raises(ZeroDivisionError), store.db.transaction():
            store.db.execute("INSERT INTO t (x) VALUES (?)", (3.0,))
            1 / 0
        assert store.db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 2  # rolled back
