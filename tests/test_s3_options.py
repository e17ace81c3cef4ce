"""S3 client settings without an S3 server: the documented retry and timeout defaults reach pyarrow's
S3FileSystem, and the CLI's S3 flags do not leak from one test (or command) into the next."""

from __future__ import annotations

import argparse
import os

import pytest

from raysegment.cli.common import add_s3_arguments, apply_s3_arguments
from raysegment.io import storage


@pytest.fixture
def captured(monkeypatch):
    """What storage passes to pyarrow's S3FileSystem and retry strategy (nothing is contacted)."""
    calls: dict = {}
    monkeypatch.setattr(storage.pafs, "S3FileSystem", lambda **kw: calls.setdefault("fs", kw) and "fs")
    monkeypatch.setattr(storage.pafs, "AwsStandardS3RetryStrategy",
                        lambda max_attempts: calls.setdefault("retry", max_attempts) and "retry")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
                 storage.ANONYMOUS_ENV):
        monkeypatch.delenv(name, raising=False)
    storage._s3_filesystem.cache_clear()
    yield calls
    storage._s3_filesystem.cache_clear()


def test_retry_and_timeout_defaults_reach_the_s3_client(captured):
    options = storage.S3Options()
    assert (options.max_attempts, options.connect_timeout_s, options.request_timeout_s) == (5, 5.0, 60.0)
    storage.filesystem("s3://bucket/key", options)
    assert captured["retry"] == 5
    assert captured["fs"] == {"anonymous": False, "connect_timeout": 5.0, "request_timeout": 60.0,
                              "retry_strategy": "retry"}  # region None: the SDK's own default chain


def test_endpoint_region_and_overrides_reach_the_s3_client(captured):
    storage.filesystem("s3://b/k", storage.S3Options(endpoint_url="http://127.0.0.1:9000", max_attempts=2,
                                                     connect_timeout_s=1.0, request_timeout_s=3.0,
                                                     anonymous=True))
    assert captured["retry"] == 2
    assert captured["fs"] == {"region": "us-east-1", "anonymous": True, "connect_timeout": 1.0,
                              "request_timeout": 3.0, "retry_strategy": "retry",
                              "endpoint_override": "127.0.0.1:9000", "scheme": "http"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_s3_arguments(parser)
    return parser.parse_args(list(argv))


def test_s3_flags_are_exported_for_workers():
    options = apply_s3_arguments(_args("--s3-endpoint", "http://127.0.0.1:9", "--s3-anonymous"))
    assert options.endpoint_url == "http://127.0.0.1:9" and options.anonymous
    assert (os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9"
            and os.environ[storage.ANONYMOUS_ENV] == "1")
    assert storage.default_s3_options().endpoint_url == "http://127.0.0.1:9"
    with pytest.raises(SystemExit,
                       match=r"^--s3-endpoint must be an http:// or https:// URL, got 'minio:9000'$"):
        apply_s3_arguments(_args("--s3-endpoint", "minio:9000"))


def test_s3_flags_of_an_earlier_test_do_not_leak():
    """Runs after the test above (file order): conftest's autouse fixture undid its exports."""
    assert os.environ.get("AWS_ENDPOINT_URL_S3") != "http://127.0.0.1:9"
    assert os.environ.get(storage.ANONYMOUS_ENV) != "1"
    assert storage._default_s3 == storage.S3Options() or storage._default_s3.endpoint_url != "http://127.0.0.1:9"
