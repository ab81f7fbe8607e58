"""Error types shared across the core: per-item bad input (dead-lettered, stream goes on) versus configuration
errors (fail at start-up with a message naming the parameter, the value and what is allowed)."""

from __future__ import annotations

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


class ConfigError(ValueError):
    """A configuration problem found at start-up (wrong dimension, unknown model, missing file, ...)."""
