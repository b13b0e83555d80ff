"""Data snapshots: bitwise round trips, content addressing, chunk sharing on append, integrity."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from loopserve import data
from loopserve.data import CHUNK_ROWS
from loopserve.store import IntegrityError, Store


def assert_bitwise_equal(a: pa.Table, b: pa.Table) -> None:
    """Same names and types, same nulls, and the same bits in every present value (NaN included)."""
    assert a.schema.names == b.schema.names
    assert [f.type for f in a.schema] == [f.type for f in b.schema]
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        assert x.is_valid().to_pylist() == y.is_valid().to_pylist(), name
        if pa.types.is_floating(x.type) or pa.types.is_integer(x.type):
            xv = x.fill_null(0).to_numpy(zero_copy_only=False)
            yv = y.fill_null(0).to_numpy(zero_copy_only=False)
            width = xv.dtype.itemsize
            assert np.array_equal(xv.view(f"u{width}"), yv.view(f"u{width}")), name
        else:
            assert x.to_pylist() == y.to_pylist(), name


def sample_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[::97] = np.nan
    x[3] = -0.0
    x_mask = np.zeros(n, bool)
    x_mask[::13] = True
    words = np.array(["alpha", "beta", "gamma", "δέλτα", ""])
    return pa.table({
        "x": pa.array(x, mask=x_mask),
        "i": pa.array(rng.integers(-1000, 1000, n), mask=np.arange(n) % 17 == 0),
        "s": pa.array(words[rng.integers(0, 5, n)], mask=np.arange(n) % 23 == 0),
        "b": pa.array(rng.integers(0, 2, n).astype(bool)),
        "t": pa.array(np.arange(n).astype("datetime64[us]")),
    })


def blob_files(root) -> set[str]:
    out = set()
    for dirpath, _, files in os.walk(root / "blobs"):
        out.update(os.path.basename(dirpath) + f for f in files if not f.startswith(".tmp"))
    return out


def test_parquet_round_trip_is_bitwise_across_chunks(tmp_path):
    table = sample_table(2 * CHUNK_ROWS + 1234)
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=50_000)  # row groups not aligned with chunks
    info = data.snapshot(path, store=tmp_path / "store", name="train")
    assert (info.rows, info.chunks, info.chunks_reused) == (table.num_rows, 3, 0)
    back = data.load_snapshot(info.id, store=tmp_path / "store")
    assert_bitwise_equal(back, pq.read_table(path))
    assert_bitwise_equal(back, table)
    assert data.load_snapshot("train", store=tmp_path / "store").num_rows == table.num_rows  # by name
    assert data.load_snapshot(info.id[:10], store=tmp_path / "store").num_rows == table.num_rows  # by prefix


def test_csv_round_trip_with_nulls_and_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("id,amount,country,note\n1,10.5,DE,hello\n2,,FR,\n3,-0.25,,\"a, quoted\"\n4,1e300,US,x\n")
    info = data.snapshot(path, store=tmp_path / "s")
    back = data.load_snapshot(info.id, store=tmp_path / "s")
    expected = pacsv.read_csv(path)
    assert_bitwise_equal(back, expected)
    assert back.column("amount").null_count == 1
    assert back.column("note").to_pylist()[2] == "a, quoted"


def test_npz_round_trip_to_numpy_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    x[5, 2] = np.nan
    y = rng.integers(0, 3, 1000).astype(np.int16)
    label = np.array(["cat", "dog", "bird"])[y]
    path = tmp_path / "features.npz"
    np.savez(path, x=x, y=y, label=label)
    info = data.snapshot(path, store=tmp_path / "s")
    back = data.to_numpy(info.id, store=tmp_path / "s")
    assert back["x"].shape == x.shape and back["x"].dtype == x.dtype
    assert np.array_equal(back["x"].view(np.uint32), x.view(np.uint32))  # the NaN's bits too
    assert back["y"].dtype == np.int16 and np.array_equal(back["y"], y)
    assert back["label"].dtype.kind == "U" and np.array_equal(back["label"], label)


def test_identical_data_gives_identical_id_whatever_the_name_or_batching(tmp_path):
    store = tmp_path / "s"
    table = sample_table(70_000)
    a, b = tmp_path / "a.parquet", tmp_path / "copy-of-b.parquet"
    pq.write_table(table, a)
    shutil.copy(a, b)
    ia = data.snapshot(a, store=store, name="first")
    ib = data.snapshot(b, store=store, name="second")
    assert ia.id == ib.id and ib.chunks_reused == ib.chunks
    # the same rows from memory, in batches of odd sizes, give the same id
    batches = pa.Table.from_batches(table.to_batches(max_chunksize=999))
    assert data.snapshot(batches, store=store).id == ia.id
    c = tmp_path / "c.csv"
    pacsv.write_csv(table.select(["i", "s"]), c)
    shutil.copy(c, tmp_path / "d.csv")
    assert data.snapshot(c, store=store).id == data.snapshot(tmp_path / "d.csv", store=store).id
    # different data, different id
    changed = table.set_column(1, "i", pa.array(np.zeros(len(table), np.int64)))
    assert data.snapshot(changed, store=store).id != ia.id
    # the catalog holds one entry per id, under the latest name
    entries = {s.id: s for s in data.list_snapshots(store)}
    assert entries[ia.id].name == "second"


def test_values_under_nulls_do_not_change_the_id(tmp_path):
    values = np.array([1.0, 2.0, 3.0, 4.0])
    validity = pa.array([True, False, True, True]).buffers()[1]
    zeros = pa.Array.from_buffers(pa.float64(), 4, [validity, pa.py_buffer(np.where([1, 0, 1, 1], values, 0))])
    junk = pa.Array.from_buffers(pa.float64(), 4, [validity, pa.py_buffer(values)])  # 2.0 under the null
    assert zeros.to_pylist() == junk.to_pylist()
    store = tmp_path / "s"
    assert data.snapshot(pa.table({"v": zeros}), store=store).id == data.snapshot(pa.table({"v": junk}), store=store).id


def test_append_shares_unchanged_chunks(tmp_path):
    store = tmp_path / "s"
    base = sample_table(2 * CHUNK_ROWS + 500, seed=2)
    more = sample_table(CHUNK_ROWS + 100, seed=3)
    info = data.snapshot(base, store=store, name="base")
    before = blob_files(store)
    grown = data.snapshot_append(info.id, more, store=store, name="grown")
    new = blob_files(store) - before
    # chunks 0 and 1 are shared; chunk 2 (was partial) and chunk 3 are new; plus manifest and chunk statistics
    assert (grown.rows, grown.chunks, grown.chunks_reused, grown.parent) == (base.num_rows + more.num_rows, 4, 2,
                                                                             info.id)
    manifest = data.read_manifest(grown.id, store)
    chunk_digests = {c.digest for c in manifest.core.chunks}
    assert {d for d in new if d in chunk_digests} == {c.digest for c in manifest.core.chunks[2:]}
    assert len(new) == 4
    full = pa.concat_tables([base, more])
    assert_bitwise_equal(data.load_snapshot(grown.id, store=store), full)
    # a file whose first rows are the base's: the same id as the append, the same chunks shared
    path = tmp_path / "grown.parquet"
    pq.write_table(full, path)
    again = data.snapshot(path, store=store)
    assert again.id == grown.id and again.chunks_reused == 4
    # statistics merged over chunks equal those computed over the whole table
    whole = data.stats.table_stats(full)
    for got, want in zip(manifest.stats, whole):
        assert got.count == want.count and got.nulls == want.nulls and got.nans == want.nans
        assert got.min == want.min and got.max == want.max and got.distinct == want.distinct
        if want.mean is not None:
            assert got.mean == pytest.approx(want.mean, rel=1e-9) and got.std == pytest.approx(want.std, rel=1e-9)


def test_append_refuses_other_columns(tmp_path):
    info = data.snapshot(pa.table({"a": [1, 2], "b": ["x", "y"]}), store=tmp_path)
    with pytest.raises(data.SnapshotError, match=r"columns \['a'\], expected \['a', 'b'\]"):
        data.snapshot_append(info.id, pa.table({"a": [3]}), store=tmp_path)
    with pytest.raises(data.SnapshotError, match="column 'a' is string, expected int64"):
        data.snapshot_append(info.id, pa.table({"a": ["z"], "b": ["q"]}), store=tmp_path)


def test_manifest_statistics(tmp_path):
    table = sample_table(5000)
    info = data.snapshot(table, store=tmp_path)
    m = data.read_manifest(info.id, tmp_path)
    x = m.column_stats("x")
    raw = table.column("x").to_numpy(zero_copy_only=False)  # nulls as NaN
    valid = table.column("x").is_valid().to_numpy(zero_copy_only=False)
    present = raw[valid & ~np.isnan(raw)]
    assert x.nulls == table.column("x").null_count and x.nans == int(np.isnan(raw[valid]).sum())
    assert x.mean == pytest.approx(present.mean()) and x.std == pytest.approx(present.std())
    assert (x.min, x.max) == (present.min(), present.max())
    s = m.column_stats("s")
    assert s.kind == "categorical" and s.distinct == 5
    assert s.categories == sorted(["alpha", "beta", "gamma", "δέλτα", ""])
    assert [c.name for c in m.core.columns] == table.column_names and m.core.columns[0].type == "double"


def test_tampered_chunk_is_refused(tmp_path):
    table = sample_table(CHUNK_ROWS + 10)
    info = data.snapshot(table, store=tmp_path)
    chunk = data.read_manifest(info.id, tmp_path).core.chunks[1]
    with Store(tmp_path) as s:
        path = s.blobs.path(chunk.digest)
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.SnapshotCorrupt, match=r"chunk 1 \(rows 65536-65545\) is corrupt and was refused") as e:
        data.load_snapshot(info.id, store=tmp_path)
    assert isinstance(e.value, IntegrityError)
    path.unlink()
    with pytest.raises(data.SnapshotCorrupt, match="missing"):
        data.load_snapshot(info.id, store=tmp_path)


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(data.SnapshotError, match=r"unknown file type '\.txt', expected .*\.csv"):
        data.snapshot(tmp_path / "x.txt", store=tmp_path / "s")
    with pytest.raises(data.SnapshotError, match="no such file"):
        data.snapshot(tmp_path / "missing.parquet", store=tmp_path / "s")
    with pytest.raises(data.SnapshotError, match="different lengths"):
        data.snapshot({"a": np.arange(3), "b": np.arange(4)}, store=tmp_path / "s")
    with pytest.raises(data.SnapshotNotFound, match="no snapshot 'nope'"):
        data.load_snapshot("nope", store=tmp_path / "s")
    with pytest.raises(ValueError, match="invalid snapshot name"):
        data.snapshot({"a": np.arange(3)}, store=tmp_path / "s", name="../evil")


def test_csv_whose_later_rows_change_a_type_is_read_whole(tmp_path):
    path = tmp_path / "grow.csv"
    rows = "\n".join(str(i) for i in range(3_000_000))
    path.write_text("v\n" + rows + "\n0.5\n")  # past the first 16 MB block: a float after integers
    info = data.snapshot(path, store=tmp_path / "s")
    back = data.load_snapshot(info.id, store=tmp_path / "s")
    assert back.schema.field("v").type == pa.float64() and back.column("v")[-1].as_py() == 0.5


def test_a_name_resolves_to_the_snapshot_given_it_last(store_location):
    import numpy as np

    from loopserve.data import read_manifest, snapshot

    store = store_location
    a = snapshot({"x": np.arange(10)}, store=store, name="train")
    b = snapshot({"x": np.arange(20)}, store=store, name="train")
    assert read_manifest("train", store=store).id == b.id
    again = snapshot({"x": np.arange(10)}, store=store, name="train")  # the same data as a, named again
    assert again.id == a.id and read_manifest("train", store=store).id == a.id


def test_the_catalog_lists_resolves_prefixes_and_keeps_parents(store_location):
    import numpy as np

    from loopserve.data import list_snapshots, load_snapshot, read_manifest, snapshot, snapshot_append

    base = snapshot({"x": np.arange(10.0)}, store=store_location, name="base")
    grown = snapshot_append("base", {"x": np.arange(5.0)}, store=store_location)
    assert grown.parent == base.id and grown.rows == 15
    assert [s.id for s in list_snapshots(store=store_location)] == [base.id, grown.id]
    assert read_manifest(grown.id[:8], store=store_location).id == grown.id
    assert isinstance(list_snapshots(store=store_location)[0].created_at, float)  # a double, not PostgreSQL's REAL
    assert load_snapshot(grown.id, store=store_location).column("x").to_pylist()[-1] == 4.0
    with pytest.raises(data.SnapshotNotFound, match="no snapshot 'nope'"):
        read_manifest("nope", store=store_location)
