"""One storage layer for every URI the product reads or writes: local paths and s3:// URIs.

Everything goes through pyarrow's filesystems, the same objects Ray Data and Ray Train take, so a
dataset, a checkpoint and a Parquet output behave the same on local disk, AWS S3, MinIO or Ceph.

S3 configuration (`S3Options`):
- credentials: the standard AWS chain (env vars, ~/.aws, instance profile) unless `anonymous`;
- endpoint: `endpoint_url` (flag `--s3-endpoint`) or the `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
  environment variables, for S3-compatible stores;
- anonymous (unsigned) requests for public buckets: `anonymous` (flag `--s3-anonymous`) or
  `RAYSEGMENT_S3_ANONYMOUS=1`;
- retries: pyarrow's own AWS standard retry strategy with `max_attempts` (no home-made loops), and
  connect/request timeouts so a dead endpoint ends in an error, never a hang.

Ray workers are separate processes (often on other machines): they build their own filesystems from
their environment. `WORKER_ENV_VARS` are the variables the driver ships to them (cluster.connect puts
them in the job's runtime_env); credentials are deliberately NOT among them, because a runtime_env is
stored in the GCS and shown by the dashboard and `ray job` commands. Workers get credentials the way the
driver does: the AWS chain on their own node (instance profile, ~/.aws, or env inherited from `ray start`).
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import logging
import os
import posixpath
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from raysegment.errors import NotRegularFileError
from raysegment.io import names

ANONYMOUS_ENV = "RAYSEGMENT_S3_ANONYMOUS"
# Non-secret S3 settings every Ray worker must share with the driver.
WORKER_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                   ANONYMOUS_ENV)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class S3Options:
    """How to reach S3. Never holds secrets: keys come from the AWS credential chain."""

    endpoint_url: str | None = None  # e.g. "http://127.0.0.1:9000" for MinIO; None = AWS or env
    region: str | None = None  # None = AWS_REGION / AWS_DEFAULT_REGION / us-east-1
    anonymous: bool = False  # public buckets
    max_attempts: int = 5  # per request, AWS standard retry strategy (exponential backoff)
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0

    def resolved(self) -> S3Options:
        """Fill unset fields from the environment (so the options can be shipped to Ray workers)."""
        endpoint = (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region is None and endpoint:
            region = "us-east-1"  # S3-compatible stores ignore it, but the SDK wants one
        anonymous = self.anonymous or _env_flag(ANONYMOUS_ENV)
        return S3Options(
            endpoint, region, anonymous, self.max_attempts, self.connect_timeout_s, self.request_timeout_s
        )


_default_s3 = S3Options()


def set_default_s3_options(options: S3Options) -> None:
    """Set the process-wide S3 options (the CLI does this from its flags)."""
    global _default_s3
    _default_s3 = options


def default_s3_options() -> S3Options:
    return _default_s3.resolved()


def worker_env() -> dict[str, str]:
    """The non-secret S3 settings of this process, for Ray workers' runtime_env (never credentials)."""
    return {k: os.environ[k] for k in WORKER_ENV_VARS if os.environ.get(k)}


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


@functools.lru_cache(maxsize=16)
def _s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": options.region,
        "anonymous": options.anonymous,
        "connect_timeout": options.connect_timeout_s,  # seconds
        "request_timeout": options.request_timeout_s,  # seconds
        # AWS SDK standard retries: exponential backoff with jitter on 5xx, throttling and network errors.
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
    }
    if options.endpoint_url:
        url = options.endpoint_url
        parsed = urlparse(url if "://" in url else "https://" + url)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or s3:// URI."""
    if is_s3(uri):
        options = (s3 or _default_s3).resolved()
        return _s3_filesystem(options), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def absolute(uri: str) -> str:
    """`uri` with a relative local path made absolute against this process's working directory (and "~"
    expanded); s3:// and file:// URIs as they are. Drivers resolve their paths once with it: Ray workers
    run in other working directories, and every URI the run records or compares must be the same form."""
    if is_s3(uri) or uri.startswith(names.FILE_SCHEME):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def parent(uri: str) -> str:
    if is_s3(uri):
        return "s3://" + posixpath.dirname(uri[len("s3://") :].rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) if is_s3(uri) else os.path.basename(uri.rstrip(os.sep))


def to_uri(path: str, like: str) -> str:
    """Turn a path inside the filesystem of `like` back into a URI of the same kind."""
    return "s3://" + path if is_s3(like) else path


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    mtime_ns: int | None = None  # None on stores that do not report it
    etag: str | None = None
    kind: str = "file"  # "file", "dir", "unlistable dir", "symlink" (dangling), "fifo", "socket", ...,
    # "pruned" (a folder not walked; size = entries below it), "marker" (an S3 "folder/" marker object)


def list_files(uri: str, recursive: bool = True, s3: S3Options | None = None) -> list[FileEntry]:
    """Every file under `uri` (a folder or prefix), sorted by URI. A missing folder is an error."""
    fs, path = filesystem(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such folder or prefix: {uri}")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    entries = [
        FileEntry(
            to_uri(i.path, uri),
            int(i.size or 0),
            int(i.mtime_ns) if i.mtime_ns is not None else None,
        )
        for i in infos
        if i.type == pafs.FileType.File
    ]
    return sorted(entries, key=lambda e: e.uri)


_KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def iter_local_tree(uri: str, prune: Callable[[str], bool] | None = None) -> Iterator[FileEntry]:
    """Every entry under a local folder, recursively, as `ls -R` shows them, one folder at a time in the
    order of their full paths (memory bounded by one folder's entries, whatever the archive's size):
    regular files, folders (kind "dir"), dangling symlinks (kind "symlink"), FIFOs, sockets and devices
    (nothing is opened).

    Names are handled as bytes, so a name that is not valid UTF-8 is listed too; its URI is the escaped
    form of names.path_to_uri. Symlinks are followed (folders once each: a link loop ends there). A
    sub-folder that cannot be listed is itself an entry (kind "unlistable dir"), so the caller can report it.
    `prune(folder URI)` True: the folder is not walked; it is one entry of kind "pruned" whose size is the
    number of entries other than folders below it (counted, not listed).
    """
    root = os.fsencode(os.path.abspath(os.path.expanduser(names.uri_to_path(uri))))
    if not os.path.exists(root):
        raise FileNotFoundError(f"no such folder or prefix: {uri}")
    if not os.path.isdir(root):  # one file given as the input: itself
        st = os.stat(root)
        yield FileEntry(names.path_to_uri(root), int(st.st_size), int(st.st_mtime_ns), None,
                        _kind(st.st_mode))
        return
    seen: set[tuple[int, int]] = set()

    def walk(folder: bytes) -> Iterator[FileEntry]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                # Folders sorted as "name/": the order of full paths, as storage.list_files sorts them.
                children = sorted(it, key=lambda c: c.name + (b"/" if _is_dir(c) else b""))
        except OSError as e:
            _log_listing_problem(folder, e)
            if folder != root:
                yield FileEntry(names.path_to_uri(folder), 0, None, None, "unlistable dir")
            return
        for child in children:
            try:
                st = child.stat()  # follows symlinks
            except OSError:  # dangling symlink (or gone since scandir)
                yield FileEntry(names.path_to_uri(child.path), 0, None, None, "symlink")
                continue
            kind = _kind(st.st_mode)
            child_uri = names.path_to_uri(child.path)
            if kind == "dir" and prune is not None and prune(child_uri):
                yield FileEntry(child_uri, _count_local(child.path), None, None, "pruned")
                continue
            size = int(st.st_size) if kind == "file" else 0
            yield FileEntry(child_uri, size, int(st.st_mtime_ns), None, kind)
            if kind == "dir":
                yield from walk(child.path)

    yield from walk(root)


def _count_local(folder: bytes) -> int:
    """Entries other than folders below `folder` (symlinks to folders not followed: no loops)."""
    n = 0
    try:
        with os.scandir(folder) as it:
            for child in it:
                if child.is_dir(follow_symlinks=False):
                    n += _count_local(child.path)
                else:
                    n += 1
    except OSError:
        pass
    return n


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def iter_files(uri: str, s3: S3Options | None = None, prune: Callable[[str], bool] | None = None
               ) -> Iterator[FileEntry]:
    """Files and folders under a folder or s3:// prefix, one directory level at a time in the order of
    their full paths; `prune` as in iter_local_tree. Local folders: iter_local_tree.

    S3 (ListObjectsV2 with delimiter "/", a page of 1000 keys at a time): objects are files, prefixes are
    folders (kind "dir"), and a zero-byte "folder/" marker object is an entry of its own (kind "marker",
    named like its folder) beside that folder, so every object under the prefix is an entry or counted
    in a pruned folder (whose size is its number of objects)."""
    if not is_s3(uri):
        yield from iter_local_tree(uri, prune)
        return
    bucket, _, key = uri[len("s3://"):].partition("/")
    key = key.rstrip("/")
    client = _boto3_client((s3 or _default_s3).resolved())
    pages = client.get_paginator("list_objects_v2")

    def level(prefix: str) -> tuple[list[dict], list[str]]:
        objects, folders = [], []
        for page in pages.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            objects += page.get("Contents", [])
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return objects, folders

    def count(prefix: str) -> int:
        return sum(page.get("KeyCount", 0) for page in pages.paginate(Bucket=bucket, Prefix=prefix))

    def walk(prefix: str) -> Iterator[FileEntry]:
        objects, folders = level(prefix)
        entries = [(o["Key"][len(prefix):], o) for o in objects]
        entries += [(f[len(prefix):], None) for f in folders]  # "name/": sorts as full paths do
        for rest, obj in sorted(entries, key=lambda e: e[0]):
            if obj is not None and rest == "":  # this folder's own "folder/" marker object (sorts first)
                yield FileEntry(f"s3://{bucket}/{prefix}".rstrip("/"), 0, _s3_mtime(obj.get("LastModified")),
                                kind="marker")
                continue
            if obj is not None:
                yield FileEntry(f"s3://{bucket}/{obj['Key']}", int(obj.get("Size") or 0),
                                _s3_mtime(obj.get("LastModified")))
                continue
            folder = f"s3://{bucket}/{prefix}{rest}".rstrip("/")
            if prune is not None and prune(folder):
                yield FileEntry(folder, count(prefix + rest), None, kind="pruned")
                continue
            yield FileEntry(folder, 0, None, kind="dir")
            yield from walk(prefix + rest)

    if key:
        objects, folders = level(key + "/")
        if not objects and not folders:
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except client.exceptions.ClientError:
                raise FileNotFoundError(f"no such folder or prefix: {uri}") from None
            yield FileEntry(f"s3://{bucket}/{key}", int(head.get("ContentLength") or 0),
                            _s3_mtime(head.get("LastModified")))
            return
        yield from walk(key + "/")
        return
    yield from walk("")


def _s3_mtime(when) -> int | None:
    """An S3 LastModified (datetime, UTC) as ns since the epoch, exactly as pyarrow's listing reports it
    (results of earlier runs keep resuming)."""
    if when is None:
        return None
    return (calendar.timegm(when.utctimetuple()) * 1_000_000 + when.microsecond) * 1000


def _mtime(info: pafs.FileInfo) -> int | None:
    return int(info.mtime_ns) if info.mtime_ns is not None else None


def _log_listing_problem(folder: bytes, error: OSError) -> None:
    logging.getLogger(__name__).warning("cannot list %s: %s", names.path_to_uri(folder), error.strerror)




def _read_local(path: str | bytes, start: int = 0, length: int | None = None) -> bytes:
    """Read a local file (from byte `start`, at most `length` bytes) without ever blocking on a FIFO: open
    non-blocking, then require a regular file. Errors name the reason in words (dangling symlink,
    directory, FIFO, permission) and are OSErrors."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as e:
        if os.path.islink(path):
            target = names.path_to_uri(os.readlink(path))
            raise FileNotFoundError(f"dangling symbolic link: its target {target} does not exist") from e
        raise FileNotFoundError(f"no such file: {names.path_to_uri(path)}") from e
    except PermissionError as e:
        raise PermissionError(f"permission denied: not readable by this process (uid {os.getuid()})") from e
    except IsADirectoryError as e:  # platforms that refuse to open folders
        raise IsADirectoryError("is a directory, not an image file") from e
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError("is a directory, not an image file")
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"not a regular file but a {_kind(mode)}: not read (it could block)")
        with os.fdopen(fd, "rb") as f:
            fd = -1  # the file object owns it now
            if start:
                f.seek(start)
            return f.read() if length is None else f.read(length)
    finally:
        if fd >= 0:
            os.close(fd)


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    """Whole file. Local paths (and file:// URIs of names that are not UTF-8) never block on a FIFO and
    fail with an OSError naming the reason; see _read_local."""
    if not is_s3(uri):
        return _read_local(os.path.abspath(os.path.expanduser(names.uri_to_path(uri))))
    fs, path = filesystem(uri, s3)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:  # say so when the key is a "folder" (a prefix or an "x.png/" marker)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            raise IsADirectoryError("is a folder (an S3 prefix), not an image file") from e
        raise


@functools.lru_cache(maxsize=16)
def _boto3_client(options: S3Options):
    """A boto3 S3 client (thread-safe) with the same endpoint, region, retries and timeouts as pyarrow's."""
    import boto3
    import botocore
    import botocore.config

    config = botocore.config.Config(
        retries={"max_attempts": options.max_attempts, "mode": "standard"},
        connect_timeout=options.connect_timeout_s, read_timeout=options.request_timeout_s,
        max_pool_connections=64, signature_version=botocore.UNSIGNED if options.anonymous else None)
    return boto3.session.Session().client("s3", endpoint_url=options.endpoint_url, region_name=options.region,
                                          config=config)


def get_object(uri: str, s3: S3Options | None = None) -> bytes:
    """A whole file in ONE request: pyarrow's S3 open sends a HEAD (for the size) before every GET, which
    doubles the per-object latency of bulk reads; boto3's get_object does not. Local paths: read_bytes (it
    never blocks on a FIFO). Use it for many small objects (inference inputs); read_bytes for the rest."""
    if not is_s3(uri):
        return read_bytes(uri, s3)
    bucket, _, key = uri[len("s3://"):].partition("/")
    client = _boto3_client((s3 or _default_s3).resolved())
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        try:  # rare: a "folder" key (x.png/ marker objects) says so, anything else is missing
            return read_bytes(uri, s3)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such object: {uri}") from None


def read_head(uri: str, length: int, s3: S3Options | None = None) -> bytes:
    """The first `length` bytes of a file (all of it when shorter): ONE ranged GET on S3, one read locally
    (never blocking on a FIFO, errors as read_bytes). For deciding what a file is without reading it."""
    return read_range(uri, 0, length, s3)


def read_range(uri: str, start: int, length: int | None = None, s3: S3Options | None = None) -> bytes:
    """Bytes `start` .. `start + length` of a file (to its end when `length` is None; b"" past the end):
    one ranged GET on S3 (get_object's errors), one read locally (read_bytes' errors)."""
    if not is_s3(uri):
        return _read_local(os.path.abspath(os.path.expanduser(names.uri_to_path(uri))), start, length)
    if length == 0:
        return b""
    import botocore.exceptions

    bucket, _, key = uri[len("s3://"):].partition("/")
    client = _boto3_client((s3 or _default_s3).resolved())
    span = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
    try:
        return client.get_object(Bucket=bucket, Key=key, Range=span)["Body"].read()
    except client.exceptions.NoSuchKey:
        return get_object(uri, s3)[start:None if length is None else start + length]  # get_object's reasons
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object, or past its end
            return b""
        raise


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None, content_type: str | None = None) -> None:
    """Write a whole file, creating parent folders. Local writes are atomic (temp file + rename).
    content_type: the S3 object's Content-Type (e.g. "text/html", so a browser shows it); ignored locally."""
    fs, path = filesystem(uri, s3)
    if is_s3(uri):
        metadata = {"Content-Type": content_type} if content_type else None
        # an S3 object appears only when the upload completes
        with fs.open_output_stream(path, metadata=metadata) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A short temp name beside the target (path + ".tmp-PID" would break a 250-byte name's 255-byte limit).
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_text(uri: str, s3: S3Options | None = None) -> str:
    return read_bytes(uri, s3).decode("utf-8")


def write_text(uri: str, text: str, s3: S3Options | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), s3)


def makedirs(uri: str, s3: S3Options | None = None) -> None:
    fs, path = filesystem(uri, s3)
    fs.create_dir(path, recursive=True)


def delete_dir(uri: str, s3: S3Options | None = None) -> None:
    fs, path = filesystem(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def upload_dir(local_dir: str, uri: str, s3: S3Options | None = None) -> None:
    """Copy a local folder tree to a URI (used for checkpoints and run outputs)."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(uri, rel), f.read(), s3)


# Secrets must never reach logs, errors, saved configs or Parquet metadata.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(aws_secret_access_key|aws_session_token|secret_key|session_token|password|token)"
               r"(\s*[=:]\s*)(['\"]?)[^\s'\",]+"),
    re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"),  # AWS secret key shape
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key id shape
]


def redact(text: str) -> str:
    """Remove anything that looks like a credential from a message before it is shown or stored."""
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)
    for secret in (os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN"),
                   os.environ.get("AWS_ACCESS_KEY_ID")):
        if secret and len(secret) >= 8:  # a toy value like "x" would shred the message
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[1].sub("***", text)
    return _SECRET_PATTERNS[2].sub("***", text)
