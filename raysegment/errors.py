"""The two kinds of failure a user sees, and their exit codes.

Library code raises these; the CLI layer (raysegment/cli) turns them into one line
`raysegment COMMAND: error: ...` and the exit code, without a traceback (`--debug` shows it).

- `UserError` (exit 2): the request is wrong (missing input, bad checkpoint, bad config value, a plan the
  cluster can never run, an unreachable S3 endpoint). Rerunning the same command fails the same way.
- `RetryableError` (exit 3): the request is fine but the world was not ready (an autoscaling cluster did
  not grow in time). Rerunning the same command later may succeed.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for; the message says what to do. Exit code 2."""

    exit_code = 2


class RetryableError(Exception):
    """The request is valid but could not be served now (e.g. capacity did not arrive). Exit code 3."""

    exit_code = 3
