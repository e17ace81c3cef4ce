"""Command-line flags for object storage, shared by every subcommand that reads or writes URIs.

    from raysegment.cli.s3_args import add_s3_arguments, apply_s3_arguments
    add_s3_arguments(parser)          # in add_parser(): --s3-endpoint URL, --s3-anonymous
    apply_s3_arguments(args)          # first thing in the run function, BEFORE cluster.connect()

Flags win over the environment. They are also exported to this process's environment
(`AWS_ENDPOINT_URL_S3`, `RAYSEGMENT_S3_ANONYMOUS`) because Ray workers build their own filesystems:
cluster.connect() ships those variables to every worker through the job's runtime_env. Credentials are
never flags: they come from the standard AWS chain (env vars, ~/.aws, instance profile) on each node.
"""

from __future__ import annotations

import argparse
import os

from raysegment.io import storage


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    """Register --s3-endpoint and --s3-anonymous on `parser` (a subcommand's parser)."""
    group = parser.add_argument_group("object storage (s3:// URIs)")
    group.add_argument(
        "--s3-endpoint",
        metavar="URL",
        default=None,
        help="S3-compatible endpoint, e.g. http://minio.local:9000 (MinIO, Ceph, on-prem). Default: "
        "$AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS S3. Credentials come from the AWS chain.",
    )
    group.add_argument(
        "--s3-anonymous",
        action="store_true",
        help="unsigned requests, for public buckets (no credentials needed or sent)",
    )


def apply_s3_arguments(args: argparse.Namespace) -> storage.S3Options:
    """Make the flags the process-wide S3 options (and export them for Ray workers). Returns them resolved."""
    endpoint = getattr(args, "s3_endpoint", None)
    anonymous = bool(getattr(args, "s3_anonymous", False))
    if endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise SystemExit(f"--s3-endpoint must be an http:// or https:// URL, got {endpoint!r}")
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    if anonymous:
        os.environ[storage.ANONYMOUS_ENV] = "1"
    options = storage.S3Options(endpoint_url=endpoint, anonymous=anonymous)
    storage.set_default_s3_options(options)
    return options.resolved()
