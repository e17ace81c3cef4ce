"""Fast unit tests of raysegment/io/names.py: name rules, URI escapes, keys (no Ray, no files)."""

from __future__ import annotations

import hashlib
import os

import pytest

from raysegment.io import names


def sha10(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def test_constants():
    assert names.IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".jp2",
                                      ".j2k", ".dcm", ".dicom", ".ima")
    assert names.MANIFEST_EXTENSIONS == (".csv", ".parquet")
    assert names.FILE_SCHEME == "file://"
    assert names.MAX_NAME_BYTES == 255
    assert names.MASK_SUFFIX == ".mask.png"


@pytest.mark.parametrize("uri, expected", [
    ("/a/b/img.png", "img.png"),
    ("a\\b\\img.png", "img.png"),
    ("s3://bucket/dir/", "dir"),
    ("s3://bucket/dir//", "dir"),
    ("file:///x/y.dcm", "y.dcm"),
    ("plain", "plain"),
    ("C:\\data\\x.tif\\", "x.tif"),
    ("s3://b/dirX/", "dirX"),
    ("/a/XX", "XX"),
])
def test_basename(uri, expected):
    assert names.basename(uri) == expected


@pytest.mark.parametrize("uri, expected", [
    ("a/b/img.dcm", "img"),
    ("1.2.840", "1.2"),
    ("noext", "noext"),
    ("a/b.c/d", "d"),
    ("x.tar.gz", "x.tar"),
    (".hidden", ""),
])
def test_stem(uri, expected):
    assert names.stem(uri) == expected


@pytest.mark.parametrize("name, expected", [
    ("a/IMG.PNG", "png"), ("x.Tar.GZ", "gz"), ("noext", ""), ("d.x/noext", ""), ("1.2.840", "840"),
])
def test_extension(name, expected):
    assert names.extension(name) == expected


@pytest.mark.parametrize("name, expected", [
    ("a.png", True), ("A.PNG", True), ("b.JpEg", True), ("c.tiff", True), ("d.dcm", True), ("e.jpg", True),
    ("f.tif", True), ("dir/x.png", True), ("x.gif", True), ("x.BMP", True), ("x.jp2", True), ("x.J2K", True),
    ("x.dicom", True), ("x.DCM", True), ("scan.IMA", True), ("1.2.840", True),
    ("1.2.840.113619.2.55.3", True),
    (".x.png", False), ("dir/.x.png", False), ("._x.png", False), ("", False), ("/", False), ("noext", False),
    ("x.png/", True), ("log.1", False), ("x.txt", False), ("1.2.x", False), ("12", False),
])
def test_is_image_name(name, expected):
    assert names.is_image_name(name) is expected


@pytest.mark.parametrize("name, expected", [
    ("a.png", True), ("A.JPG", True), ("noext", True), ("1.2.840.113619", True), ("scan.dcm", True),
    ("a.txt", True), ("dir/README", True), ("x.csv", True), ("a.1b", True), ("scan.IMA", True),
    (".hidden", False), ("d/.x.png", False), ("", False), ("._a.png", False), ("d/.DS_Store", False),
    ("Thumbs.db", False), ("DESKTOP.INI", False), ("ehthumbs.db", False),
])
def test_is_input_name(name, expected):
    """Every file is an input of bulk inference (its bytes decide) unless hidden or OS clutter."""
    assert names.is_input_name(name) is expected


@pytest.mark.parametrize("name, is_dir, expected", [
    (".DS_Store", False, "os-clutter"), ("._scan.png", False, "os-clutter"),
    ("Thumbs.db", False, "os-clutter"),
    ("desktop.ini", False, "os-clutter"), ("Icon\r", False, "os-clutter"), ("__MACOSX", True, "os-clutter"),
    ("$RECYCLE.BIN", True, "os-clutter"), ("System Volume Information", True, "os-clutter"),
    ("__MACOSX", False, None), (".git", True, "hidden"), (".thumbnails", True, "hidden"),
    (".hidden.png", False, "hidden"), ("a/b/.x", False, "hidden"), ("scan.png", False, None),
    ("README", False, None), ("Thumbs", False, None),
])
def test_listing_skip(name, is_dir, expected):
    assert names.listing_skip(name, is_dir) == expected


@pytest.mark.parametrize("name, expected", [
    ("a.dcm", True), ("noext", True), ("1.2.840", True), ("a.png", True), ("a.GIF", True),
    ("a.txt", False), (".x", False), ("._x.png", False), ("Thumbs.db", False),
])
def test_may_be_image_name(name, expected):
    """Training and ground-truth folders: named like an image, or without an extension."""
    assert names.may_be_image_name(name) is expected


@pytest.mark.parametrize("name, expected", [
    ("l.csv", True), ("L.CSV", True), ("x.Parquet", True), ("x.csv.gz", False), ("csv", False),
    ("x.json", False),
])
def test_is_manifest_name(name, expected):
    assert names.is_manifest_name(name) is expected


def test_resolve():
    assert names.resolve("s3://b/k.png", "/base") == "s3://b/k.png"
    assert names.resolve("file:///x%E9.png", "/base") == "file:///x%E9.png"
    assert names.resolve("/abs/k.png", "/base") == "/abs/k.png"
    assert names.resolve("/abs/k.png", "s3://b/m") == "/abs/k.png"
    assert names.resolve("sub/k.png", "s3://b/m/") == "s3://b/m/sub/k.png"
    assert names.resolve("sub/k.png", "s3://b/m") == "s3://b/m/sub/k.png"
    assert names.resolve("sub/k.png", "s3://b/m//") == "s3://b/m/sub/k.png"
    assert names.resolve("k.png", "s3://b/mX") == "s3://b/mX/k.png"
    assert names.resolve("sub/k.png", "/base") == os.path.join("/base", "sub/k.png") == "/base/sub/k.png"
    assert names.resolve("k.png", "rel") == "rel/k.png"
    assert names.resolve("S3://b/k.png", "/base") == "/base/S3://b/k.png"


def test_path_to_uri_valid_utf8():
    assert names.path_to_uri("/data/café 1.png") == "/data/café 1.png"
    assert names.path_to_uri(b"/data/caf\xc3\xa9.png") == "/data/café.png"
    assert names.path_to_uri("rel/x") == "rel/x"


def test_path_to_uri_invalid_utf8():
    # hand-written: each non-UTF-8 byte and the space percent-encoded, "/" kept, upper-case hex
    assert names.path_to_uri(b"/data/caf\xe9 1.png") == "file:///data/caf%E9%201.png"
    assert names.path_to_uri(b"/a\xff/b%c\xe9") == "file:///a%FF/b%25c%E9"
    assert names.path_to_uri(os.fsdecode(b"/d/\xe9")) == "file:///d/%E9"


def test_uri_to_path():
    assert names.uri_to_path("file:///data/caf%E9%201.png") == b"/data/caf\xe9 1.png"
    assert names.uri_to_path("file:///a%FF/b%25c%E9") == b"/a\xff/b%c\xe9"
    assert names.uri_to_path("file:///data/caf%C3%A9%20x.png") == "/data/café x.png"
    assert names.uri_to_path("file:///plain") == "/plain"
    assert names.uri_to_path("/data/x%20y.png") == "/data/x%20y.png"
    assert names.uri_to_path("s3://b/k%E9") == "s3://b/k%E9"
    assert names.uri_to_path("FILE:///x%E9") == "FILE:///x%E9"


@pytest.mark.parametrize("raw", [b"/data/caf\xe9 1.png", b"/x/\x80\x81/y z", b"/ok/name.png", b"/%41"])
def test_uri_round_trip(raw):
    back = names.uri_to_path(names.path_to_uri(raw))
    assert os.fsencode(back) == raw


@pytest.mark.parametrize("key, expected", [
    ("a/b.png", "a/b.png"),
    ("s3://bucket/a/b.png", "bucket/a/b.png"),
    ("file:///x/y.png", "x/y.png"),
    ("x+y.z-1://k", "k"),
    ("1s3://k", "1s3:/k"),
    ("a\\b\\c.png", "a/b/c.png"),
    ("../../etc/passwd", "etc/passwd"),
    ("./a//b/./c", "a/b/c"),
    ("/abs/x", "abs/x"),
    ("C:/data/x.png", "data/x.png"),
    ("C:/C:/x", "x"),
    ("C:", "unnamed"),
    ("", "unnamed"),
    ("../..", "unnamed"),
    ("CC:/x", "CC:/x"),
    ("a/C:/x", "a/C:/x"),
    ("1:/x", "1:/x"),
])
def test_sanitize_key(key, expected):
    assert names.sanitize_key(key) == expected
    assert names.sanitize_key(expected) == expected  # idempotent


def test_digest():
    assert names._digest("abc") == "ba7816bf8f"  # published SHA-256 test vector of "abc"
    assert len(names._digest("x")) == 10
    assert names._digest("\udce9") == hashlib.sha256(b"\xed\xb3\xa9").hexdigest()[:10]


def test_fit_name_short_names_unchanged():
    assert names.fit_name("a.png") == "a.png"
    assert names.fit_name("a.png", ".mask.png") == "a.png.mask.png"
    assert names.fit_name("x" * 255) == "x" * 255
    assert names.fit_name("x" * 246, ".mask.png") == "x" * 246 + ".mask.png"
    assert names.fit_name("abcd", "ef", limit=6) == "abcdef"


def test_fit_name_long_ascii():
    name = "x" * 256
    out = names.fit_name(name)
    # 255 = 244 kept + "~" + 10 hex
    assert out == "x" * 244 + "~" + sha10(name)
    assert len(out.encode()) == 255
    out = names.fit_name("y" * 247, ".mask.png")
    assert out == "y" * 235 + "~" + sha10("y" * 247) + ".mask.png"
    assert len(out.encode()) == 255


def test_fit_name_small_limit():
    assert names.fit_name("abcdefghij", "", limit=10) == "abcdefghij"
    out = names.fit_name("abcdefghijklmnop", ".s", limit=16)
    # room = 16 - len("~" + 10 hex + ".s") = 16 - 13 = 3
    assert out == "abc~" + sha10("abcdefghijklmnop") + ".s"


def test_fit_name_multibyte_keeps_whole_characters():
    name = "é" * 200  # 400 bytes
    out = names.fit_name(name)
    # room = 255 - 11 = 244 bytes = 122 characters of 2 bytes
    assert out == "é" * 122 + "~" + sha10(name)
    name = "a" + "é" * 200  # room 244: "a" + 121 "é" = 243 bytes, the next "é" would split
    out = names.fit_name(name)
    assert out == "a" + "é" * 121 + "~" + sha10(name)
    assert len(out.encode()) == 254


def test_fit_name_distinct_for_shared_prefix():
    a, b = "p" * 300 + "a", "p" * 300 + "b"
    assert names.fit_name(a) != names.fit_name(b)
    assert names.fit_name(a)[:244] == names.fit_name(b)[:244]


def test_mask_key():
    assert names.mask_key("a/b/img.png") == "a/b/img.png.mask.png"
    assert names.mask_key("img.jpg") == "img.jpg.mask.png"
    assert names.mask_key("s3://bkt/x.png", ".m") == "bkt/x.png.m"
    assert names.mask_key("../up.png") == "up.png.mask.png"
    long_dir, long_file = "d" * 300, "f" * 300
    out = names.mask_key(f"{long_dir}/{long_file}")
    assert out == "d" * 244 + "~" + sha10(long_dir) + "/" + "f" * 235 + "~" + sha10(long_file) + ".mask.png"
    assert all(len(p.encode()) <= 255 for p in out.split("/"))
    assert names.mask_key("") == "unnamed.mask.png"


def test_stable_key_unchanged_names():
    assert names.stable_key("a/b.png", "/in/a/b.png") == "a/b.png"
    assert names.stable_key("x", "/in/x") == "x"


def test_stable_key_changed_names_get_digest():
    uri = "/in/../b.png"
    assert names.stable_key("../b.png", uri) == "b~" + sha10(uri) + ".png"
    assert names.stable_key("/a/b.tar.gz", "u") == "a/b.tar~" + sha10("u") + ".gz"
    assert names.stable_key("a//noext", "v") == "a/noext~" + sha10("v")
    uri = "s3://bk/d/x.png"
    assert names.stable_key(uri, uri) == "bk/d/x~" + sha10(uri) + ".png"
    assert names.stable_key("", "w") == "unnamed~" + sha10("w")
    # two inputs that sanitize to the same key stay distinct
    assert names.stable_key("/a.png", "/1") != names.stable_key("//a.png", "/2")
