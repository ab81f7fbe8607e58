"""Every error, warning and dead-letter reason of splice-monitor, in one place (like scikit-learn's
``exceptions.py``).

Two kinds of failure, handled differently:

- per-item bad input (:class:`BadInput`): the item is dead-lettered with one of :data:`DEAD_LETTER_REASONS` and the
  stream goes on;
- errors that stop a command (:class:`SpliceError` and its subclasses): the CLI prints one line naming what failed
  and what to do, and exits with the class's ``exit_code``.

Configuration problems raise :class:`ConfigError`, which is also a ``ValueError`` so that library callers who catch
``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "DEAD_LETTER_REASONS", "BadInput", "SpliceError", "ConfigError", "NoDataError", "PipelineError",
    "ConvergenceWarning", "CorruptFileWarning", "DuplicateConceptWarning", "RandomWeightsWarning",
    "UncalibratedMeanWarning",
]

# The closed set of dead-letter reasons. Metrics label dead letters by these codes only, so the label set stays
# bounded whatever the input; the human-readable detail travels with the dead-lettered item instead.
DEAD_LETTER_REASONS: tuple[str, ...] = (
    "empty",  # zero-byte payload
    "truncated",  # image data ends early
    "not_an_image",  # bytes PIL cannot identify
    "decompression_bomb",  # pixel count above the configured limit
    "unsupported_image",  # decodes but cannot be converted to RGB
    "bad_text",  # empty / non-UTF-8 caption
    "bad_embedding",  # NaN, inf or zero-norm embedding
    "bad_record",  # malformed source record (missing payload column, wrong type, ...)
    "solver_failed",  # decomposition raised for this item
    "bad_timestamp",  # event time missing, unparsable, not finite or outside 1970..2100
    "bad_path",  # a path payload that is not a regular file, cannot be opened or lies outside the allowed root
    "payload_too_large",  # a path payload above the size limit
    "timeout",  # the item was not ready within the batch deadline (a read that hangs)
    "duplicate",  # an item id already counted (a repeated id in the source)
    "stream_limit",  # the item's stream is beyond the number of streams tracked (--max-streams)
    "other",
)


class BadInput(ValueError):
    """One item cannot be processed; it is dead-lettered with ``reason`` (one of DEAD_LETTER_REASONS)."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"BadInput reason must be one of {DEAD_LETTER_REASONS}, got {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SpliceError(Exception):
    """Base of the errors that stop a command; the CLI prints the message on one line and exits ``exit_code``."""

    exit_code: int = 1


class ConfigError(SpliceError, ValueError):
    """A configuration problem found at start-up (wrong dimension, unknown model, missing file, bad option value).

    The message names the parameter, the value and what is allowed."""

    exit_code = 2


class NoDataError(SpliceError, LookupError):
    """The store holds nothing for the requested streams, time range or slice (or lacks a table, e.g. codes)."""

    exit_code = 2


class PipelineError(SpliceError, RuntimeError):
    """The pipeline cannot go on (the aggregator died, or a batch failed on every retry)."""

    exit_code = 1


class ConvergenceWarning(UserWarning):
    """Some rows stopped before their relative duality gap reached the tolerance; the message carries the numbers."""


class CorruptFileWarning(UserWarning):
    """A history store file could not be read; it was moved to the store's ``quarantine/`` folder (both paths named)
    and its rows are left out of results until someone repairs or deletes it."""


class DuplicateConceptWarning(UserWarning):
    """A vocabulary file lists the same concept more than once (the copies are dropped)."""


class RandomWeightsWarning(UserWarning):
    """An open_clip model was built with random weights because no pretrained weights were named."""


class UncalibratedMeanWarning(UserWarning):
    """Decomposing without a modality mean estimated from the user's own data."""
