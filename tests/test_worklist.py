"""The worklist of bulk inference without Ray (raysegment/infer/worklist.py): what a run lists (folders with
odd names and exclusions, manifests), how duplicates and repeated results collapse (dedupe, latest), and the
resume rule (todo): an input is skipped only when its latest ok row has this model, calibration, schema and
ground truth and a file identity that still matches; error rows are retried, changed files redone.

Every expected value is written out by hand; nothing is compared with another implementation."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from worklist_helpers import listed

from raysegment.errors import InputError
from raysegment.infer import worklist
from raysegment.io import names
from raysegment.io.names import stable_key
from raysegment.outputs.results import RESUMES_FROM, SCHEMA, SCHEMA_VERSION, read_results


def _touch(root, *rels: str, size: int = 1) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def _keys(rows: list[dict]) -> list[str]:
    return [r["key"] for r in rows]


# --- listing --------------------------------------------------------------------------------------

def test_folder_listing_odd_names_exclusions_and_ids(tmp_path):
    _touch(tmp_path, "a/1.png", "a/IM0001", "a/1.2.840.10008.5", "a/notes.txt", "a/.hidden.png", "a/x.csv",
           "b c/ü.JPG", "out/old.png", "outside.png", "C:/d.png")
    (tmp_path / "series.png").mkdir()  # a folder named like an image: a row (the read stage explains it)
    (tmp_path / "1.2.3").mkdir()  # a UID-named DICOM series folder: not a row itself
    _touch(tmp_path, "1.2.3/4.dcm")
    (tmp_path / os.fsdecode(b"bad\xff.png")).write_bytes(b"xyz")
    rows = listed(str(tmp_path), exclude=(str(tmp_path / "out"),))
    digest = stable_key("C:/d.png", str(tmp_path / "C:" / "d.png"))
    # In the order of the names' bytes ("b c/" < "bad\xff" < "outside"), one folder at a time. Every file
    # is an input whatever its name (notes.txt, x.csv: their bytes decide, in the decode tasks) but hidden.
    assert _keys(rows) == ["1.2.3/4.dcm", digest, "a/1.2.840.10008.5", "a/1.png", "a/IM0001", "a/notes.txt",
                           "a/x.csv", "b c/ü.JPG", "bad%FF.png", "outside.png", "series.png"]
    assert digest.startswith("d~") and digest.endswith(".png")  # "C:" was dropped: the URI's digest added
    assert [r["image_id"] for r in rows] == ["4", "d~" + digest[2:-4], "1.2.840.10008", "1", "IM0001",
                                             "notes", "x", "ü", "bad%FF", "outside", "series"]
    assert [r["ordinal"] for r in rows] == list(range(11))
    assert rows[3]["image_uri"] == str(tmp_path / "a" / "1.png")
    assert rows[8]["image_uri"] == names.FILE_SCHEME + names.quote_from_bytes(
        os.fsencode(str(tmp_path)) + b"/bad\xff.png")
    assert [r["input_size"] for r in rows if r["key"] != "series.png"] == [1] * 8 + [3, 1]
    assert all(r["input_mtime_ns"] > 0 and r["input_etag"] is None and r["truth_uri"] is None for r in rows)
    # Without the exclusion our own output is listed too; "outside.png" is not under "out/".
    assert "out/old.png" in _keys(listed(str(tmp_path))) and len(listed(str(tmp_path))) == 12


def test_listing_chunks_limit_and_truth(tmp_path):
    img = tmp_path / "img"
    _touch(img, "a.png", "b.png", "c.png", "d.png", "e.png")
    tables = list(worklist.iter_listing(str(img), chunk=2))
    assert [t.num_rows for t in tables] == [2, 2, 1]
    assert all(t.schema.equals(worklist.LISTING_SCHEMA) for t in tables)
    assert pa.concat_tables(tables).column("ordinal").to_pylist() == [0, 1, 2, 3, 4]  # across chunks
    limited = list(worklist.iter_listing(str(img), limit=3, chunk=2))
    assert [t.column("key").to_pylist() for t in limited] == [["a.png", "b.png"], ["c.png"]]
    assert list(worklist.iter_listing(str(img), limit=0, chunk=2)) == []
    assert _keys(listed(str(img), limit=4, chunk=2)) == ["a.png", "b.png", "c.png", "d.png"]
    (tmp_path / "empty").mkdir()
    assert list(worklist.iter_listing(str(tmp_path / "empty"))) == []
    # Ground truth is matched by image id (the file stem); images without one get none.
    rows = listed(str(img), truth={"b": "t/b.png", "e": "t/e.png", "z": "t/z.png"})
    assert [r["truth_uri"] for r in rows] == [None, "t/b.png", None, None, "t/e.png"]


def test_manifest_listing_keeps_duplicates_until_dedupe(tmp_path):
    (tmp_path / "m.csv").write_text("image_uri,size,mtime_ns,etag\n"
                                    "p1/a.png,10,5,\"e1\"\n"
                                    "p2/b.png,,,\n"
                                    "  ,1,1,\n"  # blank: not an input
                                    "p1/a.png,99,9,e9\n"  # a duplicate: the first row wins
                                    "p2/c.dcm,7.0,x,\n")
    tables = list(worklist.iter_listing(str(tmp_path / "m.csv")))
    raw = pa.concat_tables(tables).to_pylist()
    assert [(r["key"], r["input_size"], r["ordinal"]) for r in raw] == [
        ("p1/a.png", 10, 0), ("p2/b.png", None, 1), ("p1/a.png", 99, 2), ("p2/c.dcm", 7, 3)]
    rows = listed(str(tmp_path / "m.csv"))
    assert [(r["image_uri"], r["key"], r["image_id"], r["input_size"], r["input_mtime_ns"], r["input_etag"])
            for r in rows] == [
        (str(tmp_path / "p1/a.png"), "p1/a.png", "a", 10, 5, "e1"),
        (str(tmp_path / "p2/b.png"), "p2/b.png", "b", None, None, None),
        (str(tmp_path / "p2/c.dcm"), "p2/c.dcm", "c", 7, None, None)]
    assert [r["ordinal"] for r in rows] == [0, 1, 3]


def test_parquet_manifest_and_absolute_entries(tmp_path):
    pq.write_table(pa.table({"path": ["s3://bkt/arch/p1/x.dcm", "s3://bkt/arch/p2/y.dcm", "s3://bkt/arch/z.dcm"],
                             "size": ["3", "", "5"]}), tmp_path / "m.parquet")
    rows = listed(str(tmp_path / "m.parquet"))
    assert [(r["image_uri"], r["key"], r["input_size"]) for r in rows] == [
        ("s3://bkt/arch/p1/x.dcm", "p1/x.dcm", 3), ("s3://bkt/arch/p2/y.dcm", "p2/y.dcm", None),
        ("s3://bkt/arch/z.dcm", "z.dcm", 5)]
    escaped = names.FILE_SCHEME + "/data/a%FF.png"  # an escaped local name is absolute as it is
    (tmp_path / "e.csv").write_text(f"image_uri\n{escaped}\n/data/b.png\n")
    mixed = listed(str(tmp_path / "e.csv"))
    # Both absolute: neither is joined to the manifest's folder.
    assert [r["image_uri"] for r in mixed] == [escaped, "/data/b.png"]
    # No common folder (a URI and a path): each key is its sanitized path plus the URI's digest.
    assert mixed[1]["key"] == stable_key("/data/b.png", "/data/b.png")
    assert mixed[1]["key"].startswith("data/b~")
    with pytest.raises(InputError, match=r"^manifest .*m\.parquet has no image column: .* found other$"):
        pq.write_table(pa.table({"other": ["a.png"]}), tmp_path / "m.parquet")
        listed(str(tmp_path / "m.parquet"))


def test_dedupe_keeps_the_first_of_each_uri_in_listing_order():
    listing = pa.Table.from_pylist([
        {"image_uri": "b", "ordinal": 3}, {"image_uri": "a", "ordinal": 1}, {"image_uri": "b", "ordinal": 0},
        {"image_uri": "c", "ordinal": 2}, {"image_uri": "a", "ordinal": 4}], schema=pa.schema(
            [("image_uri", pa.string()), ("ordinal", pa.int64())]))
    got = worklist.dedupe(listing).to_pylist()
    assert got == [{"image_uri": "b", "ordinal": 0}, {"image_uri": "a", "ordinal": 1},
                   {"image_uri": "c", "ordinal": 2}]
    empty = worklist.LISTING_SCHEMA.empty_table()
    assert worklist.dedupe(empty).equals(empty)


# --- latest ---------------------------------------------------------------------------------------

def _index(rows: list[dict]) -> pa.Table:
    return worklist.conform(pa.Table.from_pylist(rows), worklist.INDEX_SCHEMA)


def test_latest_on_ties_the_later_seq_wins_wherever_the_row_sits():
    index = _index([
        {"image_uri": "a", "run_id": "r1", "status": "ok", "seq": 7, "lung_fraction": 0.7},  # later read
        {"image_uri": "a", "run_id": "r1", "status": "ok", "seq": 2, "lung_fraction": 0.2},
        {"image_uri": "b", "run_id": "r2", "status": "error", "seq": 9, "lung_fraction": None},
        {"image_uri": "b", "run_id": "r1", "status": "ok", "seq": 1, "lung_fraction": 0.1},  # ok beats error
        {"image_uri": "c", "run_id": "r2", "status": "ok", "seq": 0, "lung_fraction": 0.5},  # newer run
        {"image_uri": "c", "run_id": "r1", "status": "ok", "seq": 8, "lung_fraction": 0.4},
        {"image_uri": "d", "run_id": "r1", "status": "error", "seq": 3, "lung_fraction": None},
        {"image_uri": "d", "run_id": "r2", "status": "error", "seq": 4, "lung_fraction": 0.9},  # newer error
    ])
    got = worklist.latest(index).to_pylist()
    # One row per image, in the order the winners sit in the index.
    assert [(r["image_uri"], r["seq"], r["lung_fraction"]) for r in got] == [
        ("a", 7, 0.7), ("b", 1, 0.1), ("c", 0, 0.5), ("d", 4, 0.9)]
    assert worklist.latest(worklist.INDEX_SCHEMA.empty_table()).num_rows == 0


def test_latest_is_the_row_read_results_shows(tmp_path):
    """Resume and read_results apply the same rule to the same files (runs in run-id order, rows in file
    order): what resume trusts is what the user reads."""
    rows = {"20250101T000000Z-a": [("a", "ok", 1), ("b", "ok", 2), ("a", "ok", 3), ("c", "error", 4)],
            "20250102T000000Z-b": [("b", "error", 5), ("c", "ok", 6), ("d", "error", 7), ("d", "error", 8)]}
    for run_id, entries in rows.items():
        os.makedirs(tmp_path / "runs" / run_id)
        pq.write_table(pa.Table.from_pylist(
            [{"image_uri": u, "run_id": run_id, "status": s, "lung_area_px": v} for u, s, v in entries],
            schema=pa.schema([SCHEMA.field(c) for c in ("image_uri", "run_id", "status", "lung_area_px")])),
            tmp_path / "runs" / run_id / "part-0.parquet")
    (tmp_path / "runs" / "20250102T000000Z-b" / "torn.parquet").write_bytes(b"PAR1 not parquet")
    part = worklist.Partitioner(worklist.INDEX_SCHEMA, str(tmp_path / "scratch"), nparts=1)
    assert worklist.index_files(worklist.earlier_files(str(tmp_path)), part, first_seq=100) == 108
    part.close()
    index = part.part(0)
    assert index.column("seq").to_pylist() == list(range(100, 108))  # reading order; the torn file skipped
    expected = {"a": ("ok", 3), "b": ("ok", 2), "c": ("ok", 6), "d": ("error", 8)}
    shown = read_results(str(tmp_path)).to_pylist()
    assert {r["image_uri"]: (r["status"], r["lung_area_px"]) for r in shown} == expected
    # the index keeps no lung_area_px: identify the winners by their seq instead
    seqs = {r["image_uri"]: (r["status"], r["seq"]) for r in worklist.latest(index).to_pylist()}
    assert seqs == {"a": ("ok", 102), "b": ("ok", 101), "c": ("ok", 105), "d": ("error", 107)}


def test_index_keeps_only_name_and_dice_of_structures(tmp_path):
    os.makedirs(tmp_path / "runs" / "r1")
    structures = [[{"name": "heart", "dice": 0.8, "mask_rle": "big", "area_px": 5}]]
    pq.write_table(pa.Table.from_pylist([{"image_uri": "a", "run_id": "r1", "status": "ok", "model_id": "m",
                                          "input_size": 4, "mask_png": b"png", "structures": structures[0]}]),
                   tmp_path / "runs" / "r1" / "p.parquet")
    part = worklist.Partitioner(worklist.INDEX_SCHEMA, str(tmp_path / "s"), nparts=2)
    assert worklist.index_files(worklist.earlier_files(str(tmp_path)), part) == 1
    part.close()
    rows = part.part(int(worklist.partition_of(pa.array(["a"]), 2)[0])).to_pylist()
    assert len(rows) == 1 and rows[0]["structures"] == [{"name": "heart", "dice": 0.8}]
    assert rows[0]["model_id"] == "m" and rows[0]["input_size"] == 4 and rows[0]["seq"] == 0
    assert "mask_png" not in rows[0]
    assert worklist.index_files([], part, first_seq=3) == 3


# --- todo: the resume rule ------------------------------------------------------------------------

def _listing(*rows: dict) -> pa.Table:
    base = {"image_id": "x", "key": "x.png", "input_size": 10, "input_mtime_ns": 5, "input_etag": None,
            "truth_uri": None}
    return pa.Table.from_pylist([{**base, "ordinal": i, **r} for i, r in enumerate(rows)],
                                schema=worklist.LISTING_SCHEMA)


def _done(*rows: dict) -> pa.Table:
    base = {"run_id": "r1", "status": "ok", "model_id": "m1", "calibration_id": "c1",
            "schema_version": SCHEMA_VERSION, "input_size": 10, "input_mtime_ns": 5, "input_etag": None,
            "truth_uri": None, "image_format": "png", "inversion_corrected": False, "skip_reason": None}
    return worklist.latest(_index([{**base, "seq": i, **r} for i, r in enumerate(rows)]))


def _todo(listing: pa.Table, done: pa.Table, model_id: str = "m1", calibration_id: str | None = "c1"):
    return worklist.todo(listing, done, model_id, calibration_id).column("image_uri").to_pylist()


def test_todo_skips_exactly_what_was_done_ok_with_the_same_everything():
    listing = _listing({"image_uri": "same"}, {"image_uri": "error"}, {"image_uri": "never"},
                       {"image_uri": "size", "input_size": 11}, {"image_uri": "mtime", "input_mtime_ns": 6},
                       {"image_uri": "etag", "input_etag": '"e2"'},
                       {"image_uri": "truth", "truth_uri": "t/x.png"},
                       {"image_uri": "unknown", "input_size": None, "input_mtime_ns": None},
                       {"image_uri": "etag-same", "input_etag": '"e1"'})
    done = _done({"image_uri": "same"}, {"image_uri": "error", "status": "error"}, {"image_uri": "size"},
                 {"image_uri": "mtime"}, {"image_uri": "etag", "input_etag": '"e1"'}, {"image_uri": "truth"},
                 {"image_uri": "unknown"}, {"image_uri": "etag-same", "input_etag": '"e1"'},
                 {"image_uri": "not-listed"})
    # Error rows are retried; a changed size, mtime or ETag is redone; a new ground truth adds metrics;
    # nothing known now (a manifest without identity columns) trusts the earlier row. Listing order kept.
    assert _todo(listing, done) == ["error", "never", "size", "mtime", "etag", "truth"]
    got = worklist.todo(listing, done, "m1", "c1")
    assert got.schema.equals(worklist.LISTING_SCHEMA)
    assert got.column("ordinal").to_pylist() == [1, 2, 3, 4, 5, 6]


def test_todo_redoes_another_model_calibration_schema_or_truth():
    listing = _listing({"image_uri": "a", "truth_uri": "t/a.png"}, {"image_uri": "b"})
    done = _done({"image_uri": "a", "truth_uri": "t/a.png"}, {"image_uri": "b"})
    assert _todo(listing, done) == []
    assert _todo(listing, done, model_id="m2") == ["a", "b"]
    assert _todo(listing, done, calibration_id="c2") == ["a", "b"]
    assert _todo(listing, done, calibration_id=None) == ["a", "b"]  # calibration removed
    older = _done({"image_uri": "a", "truth_uri": "t/a.png", "schema_version": SCHEMA_VERSION - 1},
                  {"image_uri": "b", "schema_version": None})
    assert _todo(listing, older) == ["b"]  # a v2 ok row of a PNG resumes (results.RESUMES_FROM); b: unknown
    ancient = _done({"image_uri": "a", "truth_uri": "t/a.png", "schema_version": 1}, {"image_uri": "b"})
    assert _todo(listing, ancient) == ["a"]
    moved = _listing({"image_uri": "a", "truth_uri": "t/other.png"}, {"image_uri": "b", "truth_uri": None})
    assert _todo(moved, done) == ["a"]  # another truth file; b still without truth
    removed = _listing({"image_uri": "a", "truth_uri": None})
    assert _todo(removed, done) == ["a"]  # ground truth removed: the metrics must go
    uncalibrated = _done({"image_uri": "b", "calibration_id": None})
    assert _todo(_listing({"image_uri": "b"}), uncalibrated, calibration_id=None) == []
    assert _todo(_listing({"image_uri": "b"}), uncalibrated, calibration_id="c1") == ["b"]
    no_model = _done({"image_uri": "b", "model_id": None})
    assert _todo(_listing({"image_uri": "b"}), no_model) == ["b"]


def test_v2_ok_rows_resume_under_v3_except_dicom_and_inversion_corrected_ones():
    """Schema 3 changed what an ok row of a DICOM is (Modality, SOP class, lateral view) and when a PNG is
    inversion-corrected (upright layouts only); any other v2 ok row is what v3 writes, so it resumes."""
    assert (SCHEMA_VERSION, RESUMES_FROM) == (3, 2)
    listing = _listing(*({"image_uri": u} for u in ("png", "dicom", "corrected", "v3-dicom", "tiff-false")))
    done = _done({"image_uri": "png", "schema_version": 2, "image_format": "png",
                  "inversion_corrected": False},
                 {"image_uri": "dicom", "schema_version": 2, "image_format": "dicom"},
                 {"image_uri": "corrected", "schema_version": 2, "image_format": "png",
                  "inversion_corrected": True},
                 {"image_uri": "v3-dicom", "schema_version": 3, "image_format": "dicom"},
                 {"image_uri": "tiff-false", "schema_version": 2, "image_format": "tiff",
                  "inversion_corrected": None})
    assert _todo(listing, done) == ["dicom", "corrected"]


def test_skipped_rows_are_done_whatever_the_model_until_the_file_schema_or_modalities_change():
    listing = _listing({"image_uri": "readme"}, {"image_uri": "sr"}, {"image_uri": "ct"}, {"image_uri": "mr"},
                       {"image_uri": "grown", "input_size": 99}, {"image_uri": "old"})
    skip = {"status": "skipped", "model_id": "another", "calibration_id": None}
    done = _done({"image_uri": "readme", **skip, "skip_reason": "not an image (no image format recognised)"},
                 {"image_uri": "sr", **skip, "skip_reason": "not an image: DICOM Structured Report"},
                 {"image_uri": "ct", **skip, "skip_reason": "not a chest radiograph (Modality CT)"},
                 {"image_uri": "mr", **skip, "skip_reason": "not a chest radiograph (Modality MR)"},
                 {"image_uri": "grown", **skip, "skip_reason": "not an image (no image format recognised)"},
                 {"image_uri": "old", **skip, "schema_version": 2, "skip_reason": "x"})
    assert _todo(listing, done) == ["grown", "old"]  # any model: a README stays no film; size or schema: redo
    with_ct = worklist.todo(listing, done, "m1", "c1", ("CR", "DX", "ct"))
    assert with_ct.column("image_uri").to_pylist() == ["ct", "grown", "old"]  # --modalities CR,DX,CT
    every = worklist.todo(listing, done, "m1", "c1", None)  # --modalities all
    assert every.column("image_uri").to_pylist() == ["ct", "mr", "grown", "old"]


def test_todo_uses_the_latest_row_an_older_ok_beats_a_newer_error():
    listing = _listing({"image_uri": "a"}, {"image_uri": "b"})
    done = _done({"image_uri": "a", "run_id": "r1"}, {"image_uri": "a", "run_id": "r2", "status": "error"},
                 {"image_uri": "b", "run_id": "r1", "input_size": 99}, {"image_uri": "b", "run_id": "r2"})
    assert _todo(listing, done) == []  # a: its ok row stands; b: the newer ok row has the current size


def test_todo_of_nothing_done_or_nothing_listed():
    listing = _listing({"image_uri": "a"}, {"image_uri": "b"})
    assert worklist.todo(listing, worklist.INDEX_SCHEMA.empty_table(), "m1").equals(listing)
    assert _todo(listing, _done({"image_uri": "a", "status": "error"})) == ["a", "b"]
    empty = worklist.LISTING_SCHEMA.empty_table()
    assert worklist.todo(empty, _done({"image_uri": "a"}), "m1").num_rows == 0


# --- partitions and todo files --------------------------------------------------------------------

def test_partition_of_is_stable_and_in_range():
    uris = pa.array([f"s3://b/{i}.png" for i in range(200)] + ["s3://b/0.png"])
    parts = worklist.partition_of(uris, 8)
    assert parts.dtype == np.int64 and parts.min() >= 0 and parts.max() <= 7 and len(set(parts.tolist())) == 8
    assert parts[0] == parts[-1]
    assert worklist.partition_of(pa.chunked_array([uris]), 8).tolist() == parts.tolist()
    assert worklist.partition_of(uris).max() < worklist.NPARTS and worklist.partition_of(uris).max() >= 8


def test_conform_fills_missing_columns_and_casts():
    schema = pa.schema([("image_uri", pa.string()), ("input_size", pa.int64()), ("truth_uri", pa.string())])
    got = worklist.conform(pa.table({"input_size": pa.array([1, 2], pa.int32()), "extra": [0, 0],
                                     "image_uri": ["a", "b"]}), schema)
    assert got.schema.equals(schema)
    assert got.to_pylist() == [{"image_uri": "a", "input_size": 1, "truth_uri": None},
                               {"image_uri": "b", "input_size": 2, "truth_uri": None}]


@pytest.mark.parametrize("small", [10**6, 3])  # in memory, and spilled to partition files
def test_partitioner_splits_by_uri_and_keeps_append_order(tmp_path, monkeypatch, small):
    monkeypatch.setattr(worklist, "SMALL", small)
    monkeypatch.setattr(worklist, "FLUSH_ROWS", 2)
    part = worklist.Partitioner(worklist.LISTING_SCHEMA, str(tmp_path / "p"), nparts=4)
    uris = [f"u{i % 6}" for i in range(14)]
    for start in range(0, 14, 5):
        end = min(start + 5, 14)
        part.add(pa.table({"image_uri": uris[start:end], "ordinal": list(range(start, end))}))
    part.add(pa.table({"image_uri": pa.array([], pa.string())}))
    part.close()
    assert part.spilled is (small == 3)
    assert os.path.isdir(tmp_path / "p") is (small == 3)
    seen = []
    for p in range(4):
        table = part.part(p)
        assert table.schema.equals(worklist.LISTING_SCHEMA)
        rows = table.to_pylist()
        assert all(worklist.partition_of(pa.array([r["image_uri"]]), 4)[0] == p for r in rows)
        ordinals = [r["ordinal"] for r in rows]
        assert ordinals == sorted(ordinals)  # append order within a partition
        seen += ordinals
    assert sorted(seen) == list(range(14))


def test_partitioner_empty_partition_is_an_empty_table(tmp_path, monkeypatch):
    monkeypatch.setattr(worklist, "SMALL", 0)
    part = worklist.Partitioner(worklist.LISTING_SCHEMA, str(tmp_path / "p"), nparts=64)
    part.add(pa.table({"image_uri": ["only"], "ordinal": [0]}))
    part.close()
    home = int(worklist.partition_of(pa.array(["only"]), 64)[0])
    assert part.part(home).column("image_uri").to_pylist() == ["only"]
    other = (home + 1) % 64
    assert part.part(other).num_rows == 0 and part.part(other).schema.equals(worklist.LISTING_SCHEMA)
    assert sorted(os.listdir(tmp_path / "p")) == [f"part-{home:05d}.parquet"]


def test_todo_writer_writes_parts_of_rows_per_file(tmp_path):
    writer = worklist.TodoWriter(str(tmp_path / "todo" / "run1"), rows_per_file=3)
    listing = _listing(*({"image_uri": f"u{i}"} for i in range(7)))
    writer.add(listing.slice(0, 2))
    writer.add(listing.slice(2, 5))
    writer.close()
    assert writer.rows == 7
    assert writer.files == [str(tmp_path / "todo" / "run1" / f"part-{i:05d}.parquet") for i in range(3)]
    tables = [pq.read_table(f) for f in writer.files]
    assert [t.column("image_uri").to_pylist() for t in tables] == [["u0", "u1", "u2"], ["u3", "u4", "u5"],
                                                                   ["u6"]]
    assert all(t.schema.equals(worklist.INPUT_SCHEMA) for t in tables)  # no ordinal: workers need none
    one = worklist.TodoWriter(str(tmp_path / "one"), rows_per_file=0)  # at least one row per file
    one.add(listing.slice(0, 2))
    one.close()
    assert len(one.files) == 2
    nothing = worklist.TodoWriter(str(tmp_path / "none"), rows_per_file=5)
    nothing.close()
    assert nothing.files == [] and not os.path.exists(tmp_path / "none")


def test_scratch_is_removed_on_exit():
    with worklist.Scratch() as scratch:
        path = scratch.path("index")
        assert os.path.dirname(path) == scratch.root
        assert os.path.basename(scratch.root).startswith("raysegment-work-")
        os.makedirs(path)
    assert not os.path.exists(scratch.root)
