"""Command-line flags shared by several subcommands: object storage, the Ray cluster, the mask threshold,
post-processing and QC. Each `add_*` registers its flags on a parser or argument group; the `*_options`
helpers turn parsed flags into the library's option objects.

    from raysegment.cli import common
    common.add_s3_arguments(parser)   # in add_parser(): --s3-endpoint URL, --s3-anonymous
    common.apply_s3_arguments(args)   # first thing in the run function, BEFORE cluster.connect()

S3 flags win over the environment. They are also exported to this process's environment
(`AWS_ENDPOINT_URL_S3`, `RAYSEGMENT_S3_ANONYMOUS`) because Ray workers build their own filesystems:
cluster.connect() ships those variables to every worker through the job's runtime_env. Credentials are
never flags: they come from the standard AWS chain (env vars, ~/.aws, instance profile) on each node.
"""

from __future__ import annotations

import argparse
import os
import sys

from raysegment.io import storage

S3_GROUP = "object storage (s3:// URIs)"
QC_GROUP = "quality control (QC)"
CLUSTER_GROUP = "scaling and cluster"


CHECKPOINT_HELP = ("checkpoint folder (local or s3://), e.g. RUN_DIR/best, or 'reference': the model shipped "
                   "in the package (the default)")


def add_checkpoint_argument(group) -> None:
    """--checkpoint, defaulting to the shipped reference model."""
    from raysegment.model.reference import NAME

    group.add_argument("--checkpoint", default=NAME, metavar="URI", help=CHECKPOINT_HELP)


def announce_checkpoint(uri: str) -> None:
    """One line on stderr when the checkpoint is the shipped model (its model_id and the weights' terms), or
    when a path of the user's called 'reference' wins over the name."""
    from raysegment.model.reference import notice

    line = notice(uri)
    if line:
        print(line, file=sys.stderr)


def add_s3_arguments(parser: argparse.ArgumentParser) -> None:
    """Register --s3-endpoint and --s3-anonymous on `parser` (a subcommand's parser), in their own group."""
    group = parser.add_argument_group(S3_GROUP)
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


def add_cluster_arguments(group) -> None:
    """--address and --wait-for-capacity / --no-wait (infer and train; see cluster/capacity.py)."""
    group.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    wait = group.add_mutually_exclusive_group()
    wait.add_argument("--wait-for-capacity", type=float, metavar="SECONDS",
                      help="wait up to SECONDS for nodes to join when the plan does not fit yet "
                      "(default: 900 when joining a cluster with --address/$RAY_ADDRESS, 0 on a local Ray)")
    wait.add_argument("--no-wait", action="store_true",
                      help="never wait for nodes: fail at once when the plan does not fit what is up")


def add_threshold_argument(group) -> None:
    """--threshold: the probability threshold of the mask (infer, evaluate)."""
    group.add_argument("--threshold", type=float, help="probability threshold (default: the checkpoint's)")


def add_postprocess_arguments(group) -> None:
    """--keep-largest and --no-fill-holes (postprocess.masks.PostprocessConfig)."""
    group.add_argument("--keep-largest", type=int, default=2, metavar="K",
                       help="keep the K largest components (default 2: two lungs; 0 keeps all)")
    group.add_argument("--no-fill-holes", action="store_true", help="do not fill holes in the masks")


def add_quality_threshold_argument(group) -> None:
    """--quality-threshold: flag masks whose quality_score is below it (infer, evaluate)."""
    group.add_argument("--quality-threshold", type=float, metavar="Q",
                       help="QC: flag masks whose quality_score (predicted dice) is below Q (default: the "
                       "threshold stored with the checkpoint's calibration)")


def postprocess_options(args: argparse.Namespace):
    """The PostprocessConfig of --keep-largest, --no-fill-holes and --quality-threshold."""
    from raysegment.postprocess.masks import PostprocessConfig

    return PostprocessConfig(keep_largest=args.keep_largest, fill_holes=not args.no_fill_holes,
                             min_quality_score=args.quality_threshold)


def cluster_options(args: argparse.Namespace):
    """The cluster.capacity.ClusterOptions of --address, --wait-for-capacity and --no-wait."""
    from raysegment.cluster.capacity import ClusterOptions

    return ClusterOptions(address=args.address, wait_for_capacity=args.wait_for_capacity,
                          no_wait=bool(args.no_wait))
