"""Every error class of the package: the two kinds of failure a user sees, with their exit codes, and the
per-file failures that become error rows.

Library code raises these; the CLI layer (raysegment/cli) turns them into one line
`raysegment COMMAND: error: ...` (and an optional hint line) and the exit code, without a traceback
(`--debug` shows it).

- `UserError` (exit 2): the request is wrong (missing input, bad checkpoint, bad config value, a plan the
  cluster can never run, an unreachable S3 endpoint). Rerunning the same command fails the same way.
- `RetryableError` (exit 3): the request is fine but the world was not ready (an autoscaling cluster did
  not grow in time). Rerunning the same command later may succeed.

Both take an optional `hint=`: one line saying what to do, printed under the error.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for; the message says what to do. Exit code 2."""

    exit_code = 2

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class RetryableError(Exception):
    """The request is valid but could not be served now (e.g. capacity did not arrive). Exit code 3."""

    exit_code = 3

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


class InputError(UserError, FileNotFoundError):
    """An input, dataset or output location that does not exist or cannot be listed or reached."""


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint folder that is missing or does not load."""


class ConfigError(UserError, ValueError):
    """A configuration file, override or value is invalid; the message names the key."""


class ExportError(UserError):
    """The export ran but the exported model does not reproduce PyTorch (or a dependency is missing)."""


class PlanError(UserError, RuntimeError):
    """The requested resources cannot be scheduled on this cluster."""


# Failures of one file (a row's error, never the command's): io/decode.py and io/storage.py raise them.

class DecodeError(ValueError):
    """The bytes are not an image we can decode. str(e) is a readable one-line reason."""


class NotAnImageError(DecodeError):
    """The bytes are no image format at all (the header sniffs as none of the formats io/decode.py reads):
    a stray file in an archive, not a broken image. Still a DecodeError, so a caller that catches those
    treats it as a failure; bulk inference skips it when the file is not named like an image either
    (a README, a .xml), and reports it as an error when it is (a "scan.png" of text)."""


class NotAChestFilmError(DecodeError):
    """A readable file that is no chest film to segment: a DICOM object that holds no image, or an image
    of a modality that is not a radiograph. Never a failure: bulk inference writes a row with status
    "skipped". `reason` is the short text that row records and summaries count (no file name in it)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NonImageDicomError(NotAChestFilmError):
    """A DICOM object of a SOP class that holds no image: Structured Report, Key Object Selection,
    Presentation State, Encapsulated PDF, a DICOMDIR, ..."""


class NotRadiographError(NotAChestFilmError):
    """A DICOM image whose Modality is not among the radiographs segmented (CT, MR, US, NM, PT, ...)."""


class NotRegularFileError(OSError):
    """A local path that is not a regular file (FIFO, socket, device): it is never read."""
