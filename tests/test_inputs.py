"""Input listing and key handling units (no Ray): which files are images, manifests, identity columns, and
keys that can never leave their prefix (property tests with hypothesis).

Listings go through the production code only: io/inputs.iter_folder (what a run walks) and, for manifests,
limits and options, infer/worklist.iter_listing + dedupe (tests/worklist_helpers.listed)."""

from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st
from worklist_helpers import listed

from raysegment.errors import InputError
from raysegment.io.inputs import MANIFEST_COLUMNS, InputItem, is_manifest, iter_folder
from raysegment.io.names import is_input_name, mask_key, sanitize_key, stable_key


def _folder(uri: str, exclude: tuple[str, ...] = ()) -> list[InputItem]:
    """The folder's inputs as a run walks them (iter_folder: one folder at a time, by full path)."""
    return list(iter_folder(uri, exclude))


def _touch(root, *rels: str, data: bytes = b"x") -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.mark.parametrize("name, expected", [
    ("a.png", True), ("A.PNG", True), ("x.jpeg", True), ("x.tif", True), ("x.dcm", True),
    ("IM0001", True), ("1.2.840.10008.5", True), ("dir/sub/x.png", True), ("dir\\sub\\x.png", True),
    ("x.csv", True), ("notes.txt", True), (".hidden.png", False), ("dir/.DS_Store", False), ("", False),
    ("x.png.txt", True), ("x.12a", True), ("dir\\.hidden.png", False), ("._x.png", False),
])
def test_is_input_name(name, expected):
    """Every file is an input (its bytes decide what it is) unless its name is hidden or OS clutter."""
    assert is_input_name(name) is expected


def test_image_id_is_the_stem():
    assert InputItem("u", "site/p1/img.01.png").image_id == "img.01"
    assert InputItem("u", "site/IM0001").image_id == "IM0001"
    assert InputItem("u", "a.b/c").image_id == "c"


@pytest.mark.parametrize("key, expected", [
    ("../../etc/passwd", "etc/passwd"),
    ("/abs/dir/./x.png", "abs/dir/x.png"),
    ("s3://bucket/a/../b.dcm", "bucket/a/b.dcm"),
    ("file:///data/x.png", "data/x.png"), ("HTTPS://host/x.png", "host/x.png"),
    ("C:\\scans\\..\\p1\\img.png", "scans/p1/img.png"),
    ("c:/x.png", "x.png"),
    ("a//b///c.png", "a/b/c.png"),
    ("..", "unnamed"), ("", "unnamed"), ("/", "unnamed"), ("s3://", "unnamed"), ("C:/C:", "unnamed"),
    ("site a/ü.png", "site a/ü.png"),  # spaces and non-ASCII are kept
    ("ab:/x.png", "ab:/x.png"),  # not a drive letter: kept
    ("dir/C:/x.png", "dir/C:/x.png"),  # a drive letter only counts first
])
def test_sanitize_key_examples(key, expected):
    assert sanitize_key(key) == expected


def test_mask_key_keeps_the_whole_name():
    assert mask_key("site/a.png") == "site/a.png.mask.png"
    assert mask_key("site/a.jpg") != mask_key("site/a.png")  # same stem, different masks
    assert mask_key("../../x") == "x.mask.png"
    assert mask_key("") == "unnamed.mask.png"


_parts = st.lists(st.sampled_from(["..", ".", "", "a", "b", "C:", "x.png", "s3:", "~", "é", " "]), max_size=8)


@given(st.one_of(_parts.map("/".join), _parts.map("\\".join), st.text(max_size=40)))
def test_property_sanitized_keys_never_escape_their_prefix(key):
    clean = sanitize_key(key)
    assert clean and not clean.startswith("/") and "\\" not in clean
    parts = clean.split("/")
    assert all(p not in ("", ".", "..") for p in parts)
    joined = posixpath.normpath(posixpath.join("/out/masks", clean))
    assert joined.startswith("/out/masks/")  # under the prefix, whatever the key
    assert sanitize_key(clean) == clean  # stable: sanitizing twice changes nothing


@given(st.lists(st.text(alphabet="ab./\\", min_size=1, max_size=6), min_size=2, max_size=6, unique=True))
def test_property_mask_keys_are_distinct_for_distinct_clean_keys(keys):
    clean = {sanitize_key(k) for k in keys}
    masks = {mask_key(k) for k in clean}
    assert len(masks) == len(clean)  # the suffix never merges two inputs
    assert all(m.endswith(".mask.png") for m in masks)
    # A mask key is never itself an input's key: an input named "x.mask.png" maps to "x.mask.png.mask.png".
    assert not masks & clean or all(mask_key(m) not in masks for m in masks & clean)


def test_folder_walk_filters_and_keys(tmp_path):
    from raysegment.io.inputs import Skipped

    _touch(tmp_path, "a/1.png", "a/2.JPG", "b/3.dcm", "b/1.2.840.10008", "b/noext", "b/notes.txt",
           "b/.hidden.png", "b/._3.dcm", "b/Thumbs.db", ".cache/t.png", ".cache/u/v.png", "out/x.png",
           "out/y/z.png", "outside.png")
    skipped = Skipped()
    items = list(iter_folder(str(tmp_path), (str(tmp_path / "out"),), None, skipped))
    assert [i.key for i in items] == ["a/1.png", "a/2.JPG", "b/1.2.840.10008", "b/3.dcm", "b/noext",
                                      "b/notes.txt", "outside.png"]
    assert items[0].uri == str(tmp_path / "a" / "1.png")
    assert all(i.size == 1 and i.mtime_ns and i.etag is None for i in items)
    # by name, never rows: a hidden folder (not walked; its 2 files counted), our own output, clutter
    assert skipped.as_dict() == {"hidden": 3, "os-clutter": 2, "output": 2} and skipped.total == 7
    assert skipped.examples[0] == ".cache/ (2 files)" and "b/._3.dcm" in skipped.examples
    # The exclusion is a folder, not a name prefix: "outside.png" and "out/" differ.
    assert [i.key for i in _folder(str(tmp_path))][-3:] == ["out/x.png", "out/y/z.png", "outside.png"]
    # An exclusion of the other kind (s3 vs local) or empty is ignored.
    assert len(_folder(str(tmp_path), exclude=("", "s3://b/out"))) == 9
    # A folder name ending in "X" or a trailing slash changes nothing.
    _touch(tmp_path, "scanX/in.png")
    assert [i.key for i in _folder(str(tmp_path / "scanX") + "/")] == ["in.png"]
    # One file as the input: its name is its key.
    single = _folder(str(tmp_path / "a" / "1.png"))
    assert [(i.key, i.size) for i in single] == [("1.png", 1)]


def test_listing_limit_and_kind(tmp_path):
    _touch(tmp_path, "img/a.png", "img/b.png", "img/c.png")
    assert [r["key"] for r in listed(str(tmp_path / "img"), limit=2)] == ["a.png", "b.png"]
    assert len(listed(str(tmp_path / "img"))) == 3 and listed(str(tmp_path / "img"), limit=0) == []
    (tmp_path / "m.csv").write_text("path\nimg/c.png\n")
    assert [r["image_uri"] for r in listed(str(tmp_path / "m.csv"))] == [str(tmp_path / "img" / "c.png")]
    assert is_manifest(str(tmp_path / "m.csv")) and is_manifest("s.PARQUET") and not is_manifest("a.png")
    (tmp_path / "folder.csv").mkdir()  # a folder named like a manifest is a folder
    assert not is_manifest(str(tmp_path / "folder.csv"))


def test_manifest_columns_identity_and_duplicates(tmp_path):
    (tmp_path / "m.csv").write_text(
        "uri,image,size,mtime_ns,etag\n"
        "x/ignored.png,a/1.png,12,1700000000000000000,\"e1\"\n"
        "x/ignored.png,b/3.dcm,,,\n"
        "x/ignored.png,a/1.png,12,1,\n"  # a duplicate: the first wins
        "x/ignored.png,  ,1,1,\n"  # blank: skipped
        "x/ignored.png,c/4.png,n/a,2.0,\n")
    items = listed(str(tmp_path / "m.csv"))  # "image" comes before "uri" in MANIFEST_COLUMNS
    assert MANIFEST_COLUMNS.index("image") < MANIFEST_COLUMNS.index("uri")
    assert [r["image_uri"] for r in items] == [str(tmp_path / "a/1.png"), str(tmp_path / "b/3.dcm"),
                                               str(tmp_path / "c/4.png")]
    assert [r["key"] for r in items] == ["a/1.png", "b/3.dcm", "c/4.png"]
    assert [(r["input_size"], r["input_mtime_ns"], r["input_etag"]) for r in items] == [
        (12, 1700000000000000000, "e1"), (None, None, None), (None, 2, None)]
    by_uri = listed(str(tmp_path / "m.csv"), column="uri")
    assert [r["image_uri"] for r in by_uri] == [str(tmp_path / "x/ignored.png")]
    # An InputError: the CLI prints it as one line and exits 2 (errors.py).
    with pytest.raises(InputError, match=r"has no image column: expected one of image_uri, image, uri, path "
                                         r"\(or --manifest-column\), found uri, image, size, mtime_ns, etag"):
        listed(str(tmp_path / "m.csv"), column="missing")
    (tmp_path / "none.csv").write_text("file\na.png\n")
    with pytest.raises(InputError, match="found file"):
        listed(str(tmp_path / "none.csv"))


def test_manifest_keys_are_relative_to_the_common_folder(tmp_path):
    (tmp_path / "abs.csv").write_text(f"image_uri\n{tmp_path}/deep/s1/a.png\n{tmp_path}/deep/s2/b.png\n"
                                      f"{tmp_path}/deep/s2/c/d.png\n")
    assert [r["key"] for r in listed(str(tmp_path / "abs.csv"))] == ["s1/a.png", "s2/b.png", "s2/c/d.png"]
    (tmp_path / "s3.csv").write_text("image_uri\ns3://bkt/arch/p1/x.dcm\ns3://bkt/arch/p2/x.dcm\n")
    items = listed(str(tmp_path / "s3.csv"))
    assert [(r["image_uri"], r["key"]) for r in items] == [("s3://bkt/arch/p1/x.dcm", "p1/x.dcm"),
                                               ("s3://bkt/arch/p2/x.dcm", "p2/x.dcm")]
    (tmp_path / "one.csv").write_text("image_uri\ns3://bkt/arch/p1/x.dcm\n")
    assert [r["key"] for r in listed(str(tmp_path / "one.csv"))] == ["x.dcm"]
    (tmp_path / "mixed.csv").write_text("image_uri\ns3://bkt/a/x.dcm\n/local/b/y.dcm\n")
    # "/local/b/y.dcm" lost its leading "/" to sanitizing, so it could collide with s3://local/b/y.dcm: it
    # gets a digest of its URI (names.stable_key).
    mixed = [r["key"] for r in listed(str(tmp_path / "mixed.csv"))]
    assert mixed[0] == "bkt/a/x.dcm" and mixed[1].startswith("local/b/y~") and mixed[1].endswith(".dcm")


def test_manifest_with_backslash_paths_gets_posix_keys(tmp_path):
    (tmp_path / "win.csv").write_text("image_uri\nscans\\site1\\a.png\nscans\\site2\\b.png\n")
    assert [r["key"] for r in listed(str(tmp_path / "win.csv"))] == ["site1/a.png", "site2/b.png"]


def test_empty_exclusion_is_ignored_not_the_working_directory(tmp_path, monkeypatch):
    _touch(tmp_path, "a.png", "sub/b.png")
    monkeypatch.chdir(tmp_path)  # "" would resolve to the working directory: it must not exclude it
    assert [i.key for i in _folder(str(tmp_path), exclude=("",))] == ["a.png", "sub/b.png"]


def test_s3_options_and_manifest_column_are_passed_through(tmp_path, monkeypatch):
    """The listing hands its S3 options to every storage call (workers and driver must agree on the
    endpoint) and its column to the manifest reader."""
    from raysegment.io import storage

    _touch(tmp_path, "img/a.png")
    seen = []
    real_filesystem, entries = storage.filesystem, storage.list_files(str(tmp_path / "img"))

    def filesystem(uri, s3=None):
        seen.append(("filesystem", s3))
        return real_filesystem(uri)

    def iter_files(uri, s3=None, prune=None):
        seen.append(("iter_files", s3))
        return iter(entries)

    monkeypatch.setattr(storage, "filesystem", filesystem)
    monkeypatch.setattr(storage, "iter_files", iter_files)
    options = storage.S3Options(endpoint_url="http://127.0.0.1:1")
    assert [r["key"] for r in listed(str(tmp_path / "img"), s3=options)] == ["a.png"]
    assert seen and all(call[1] is options for call in seen) and ("iter_files", options) in seen, seen
    monkeypatch.undo()
    (tmp_path / "m.csv").write_text("image_uri,other\nimg/a.png,img/b.png\n")
    assert [r["key"] for r in listed(str(tmp_path / "m.csv"), column="other")] == ["b.png"]


def test_listing_names_that_are_not_utf8(tmp_path):
    """Escaped (file://) entries get keys from their percent-encoded text, under a plain root whose own name
    needs quoting, and under an escaped root (a folder name that is not UTF-8, given with or without '/')."""
    import os

    from raysegment.io import names

    plain = tmp_path / "sp ace% "  # a trailing space is part of the name
    _touch(plain, "ok.png")
    (plain / os.fsdecode(b"x\xff.png")).write_bytes(b"xy")
    items = _folder(str(plain))
    assert [(i.key, i.size) for i in items] == [("ok.png", 1), ("x%FF.png", 2)]
    assert items[1].uri == names.FILE_SCHEME + names.quote_from_bytes(os.fsencode(str(plain)) + b"/x\xff.png")
    root = os.fsencode(str(tmp_path)) + b"/caf\xe9X"
    os.mkdir(root)
    for name in (b"a.png", b"b\xff.png"):
        with open(root + b"/" + name, "wb") as f:
            f.write(b"z")
    uri = names.path_to_uri(root)
    assert uri.startswith("file://") and uri.endswith("%E9X")
    for root_uri in (uri, uri + "/"):
        assert [i.key for i in _folder(root_uri)] == ["a.png", "b%FF.png"]


def test_listing_key_changed_by_sanitizing_gets_the_uri_digest(tmp_path):
    import hashlib

    _touch(tmp_path, "C:/a.png")
    [item] = _folder(str(tmp_path))
    assert item.uri == str(tmp_path / "C:" / "a.png")
    assert item.key == "a~" + hashlib.sha256(item.uri.encode()).hexdigest()[:10] + ".png"


def test_s3_listing_keys_kinds_exclusions_and_identity(monkeypatch):
    from raysegment.io import storage
    from raysegment.io.inputs import iter_folder

    options = storage.S3Options(endpoint_url="http://127.0.0.1:1")
    E = storage.FileEntry

    def filesystem(uri, s3=None):
        assert s3 is options
        return object(), uri[len("s3://"):]  # no rstrip: iter_folder must strip the trailing "/"

    def iter_files(uri, s3=None, prune=None):
        assert uri == "s3://bkt/arch/" and s3 is options
        return iter([
            E("s3://bkt/arch/1.2.840", 0, kind="dir"),  # a UID-named series folder: not an input
            E("s3://bkt/arch/locked.d", 0, kind="unlistable dir"),  # always a row
            E("s3://bkt/arch/out/m.png", 5, 7, '"o"'),  # excluded: our own output
            E("s3://bkt/arch/outside.png", 6, 8, '"p"'),
            E("s3://bkt/arch/p1/a.png", 3, 9, '"e1"'),
            # a backslash is part of the key's name: its mask key must not equal a "p1/b.png" object's
            E("s3://bkt/arch/p1\\b.png", 4, None, '"e2"'),
            E("s3://bkt/arch/p1/notes.txt", 1),
            E("s3://bkt/arch/p1/x.png/", 0, kind="dir"),  # a folder named like an image: a row
            E("s3://bkt/arch/p2/fifo.png", 0, kind="fifo"),
        ])

    monkeypatch.setattr(storage, "filesystem", filesystem)
    monkeypatch.setattr(storage, "iter_files", iter_files)
    items = list(iter_folder("s3://bkt/arch/", exclude=("s3://bkt/arch/out/", "/local/excl", ""), s3=options))
    assert [(i.uri, i.key, i.size, i.mtime_ns, i.etag) for i in items] == [
        ("s3://bkt/arch/locked.d", "locked.d", 0, None, None),
        ("s3://bkt/arch/outside.png", "outside.png", 6, 8, '"p"'),
        ("s3://bkt/arch/p1/a.png", "p1/a.png", 3, 9, '"e1"'),
        ("s3://bkt/arch/p1\\b.png", stable_key("p1\\b.png", "s3://bkt/arch/p1\\b.png"), 4, None, '"e2"'),
        ("s3://bkt/arch/p1/notes.txt", "p1/notes.txt", 1, None, None),  # its bytes decide (a skipped row)
        ("s3://bkt/arch/p1/x.png/", "p1/x.png", 0, None, None),
        ("s3://bkt/arch/p2/fifo.png", "p2/fifo.png", 0, None, None),
    ]

    assert items[3].key.startswith("p1/b~") and items[3].key.endswith(".png")  # not "p1/b.png"

    monkeypatch.setattr(storage, "iter_files", lambda uri, s3=None, prune=None: iter([E(uri + "a.png", 1)]))
    assert [i.key for i in iter_folder("s3://bkt/dirX/", s3=options)] == ["a.png"]


def test_a_backslash_in_a_local_name_never_shares_a_key(tmp_path):
    """On POSIX "a\\b.png" is one file name beside the folder "a" holding "b.png": two inputs, two keys."""
    _touch(tmp_path, "a\\b.png", "a/b.png")
    keys = {os.path.basename(i.uri): i.key for i in _folder(str(tmp_path))}
    assert keys["b.png"] == "a/b.png" and keys["a\\b.png"].startswith("a/b~") and len(set(keys.values())) == 2
