"""Checks that run BEFORE Ray starts or anything is written: a wrong path or a dead endpoint should cost
the user seconds and one line, not a cluster start-up and a traceback.

- `check_reachable(*uris)`: every S3 bucket named exists and answers within a short connect timeout
  (2 attempts, `TIMEOUT_S` each), so an unreachable endpoint fails in seconds instead of after the full
  retry budget that real reads get. Access denied on the bucket itself passes (reads decide).
- `require_exists(uri, what)`: an input (image folder, manifest, data set, ground truth) exists.

Both raise errors.InputError (a UserError: exit 2) naming the URI and what to do.
"""

from __future__ import annotations

import dataclasses

from raysegment.errors import InputError
from raysegment.io import storage

TIMEOUT_S = 3.0
S3_HINT = ("check the endpoint (--s3-endpoint or AWS_ENDPOINT_URL_S3), the network and the credentials "
           "(the standard AWS chain)")


def _probe_options() -> storage.S3Options:
    return dataclasses.replace(storage.default_s3_options(), max_attempts=2, connect_timeout_s=TIMEOUT_S,
                               request_timeout_s=2 * TIMEOUT_S)


def check_reachable(*uris: str | None) -> None:
    """One quick request per distinct S3 bucket among `uris` (local paths and None are skipped)."""
    buckets = sorted({u[len("s3://"):].split("/", 1)[0] for u in uris if u and storage.is_s3(u)})
    if not buckets:
        return
    options = _probe_options()
    where = options.endpoint_url or "AWS S3"
    for bucket in buckets:
        try:
            found = storage.exists(f"s3://{bucket}", options)
        except OSError as e:
            text = " ".join(str(e).split())
            if "ACCESS_DENIED" in text or "403" in text:
                continue  # it answered; whether these keys may read the objects is for the real reads to say
            raise InputError(f"cannot reach s3://{bucket} at {where}: {text}", hint=S3_HINT) from e
        if not found:  # also what an endpoint without a network route looks like to the S3 client
            raise InputError(f"s3://{bucket}: no such bucket at {where}, or the endpoint does not answer",
                             hint=S3_HINT)


def require_exists(uri: str, what: str, hint: str | None = None) -> None:
    """`uri` (local or s3://) must exist; `what` names it for the user, e.g. "--input" or "data.path"."""
    check_reachable(uri)
    try:
        found = storage.exists(uri)
    except OSError as e:  # e.g. access denied
        raise InputError(f"{what} {uri}: cannot be read: {' '.join(str(e).split())}", hint=hint) from e
    if not found:
        raise InputError(f"{what} {uri}: no such file or folder", hint=hint)
