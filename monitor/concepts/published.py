"""The SpLiCE reference's own data, vendored under ``monitor/concepts/data/splice`` (Apache-2.0, see NOTICE there):
its three vocabularies, read with its "last N lines" convention, and its published CLIP image means, looked up by
model architecture and open_clip pretrained tag."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from monitor.errors import ConfigError

__all__ = [
    "PublishedVocabulary",
    "PUBLISHED_VOCABULARIES",
    "PublishedMean",
    "PUBLISHED_MEANS",
    "published_vocabulary_lines",
    "published_mean",
    "load_published_mean",
]

DATA_DIR = "splice"


@dataclass(frozen=True)
class PublishedVocabulary:
    """One of SpLiCE's word lists. Its file runs from the least to the most frequent entry, so the reference takes
    the *last* ``size`` lines; ``default_size`` is the size the reference recommends for it."""

    name: str
    file: str
    default_size: int
    description: str


PUBLISHED_VOCABULARIES: dict[str, PublishedVocabulary] = {
    v.name: v
    for v in (
        PublishedVocabulary("laion", "laion.txt", 10_000,
                            "SpLiCE's LAION-400m caption tokens; the reference's default (last 10,000 lines)"),
        # the 5,000 bigrams sit at the start of the file (they are rarer than the 10,000 words), so only the whole
        # file gives the "10,000 words + 5,000 bigrams" vocabulary of the paper
        PublishedVocabulary("laion-bigrams", "laion_bigrams.txt", 15_000,
                            "SpLiCE's LAION-400m words plus two-word phrases (10,000 + 5,000 lines)"),
        PublishedVocabulary("mscoco", "mscoco.txt", 10_000, "SpLiCE's MS-COCO caption tokens (last 10,000 lines)"),
    )
}


def _data(name: str):
    return resources.files("monitor.concepts").joinpath("data", DATA_DIR, name)


def published_vocabulary_lines(name: str, size: int | None = None) -> tuple[list[str], int]:
    """The concepts of a published vocabulary: the last ``size`` lines (default: its ``default_size``), stripped,
    in file order. Blank lines are not concepts and are dropped (mscoco has one); every other line is kept as the
    reference keeps it, '#' and punctuation tokens included. Returns (concepts, lines taken)."""
    spec = PUBLISHED_VOCABULARIES.get(name)
    if spec is None:
        raise ConfigError(
            f"vocab: {name!r} is not a published vocabulary; known: {', '.join(PUBLISHED_VOCABULARIES)}"
        )
    lines = _data(spec.file).read_text(encoding="utf-8").splitlines()
    size = spec.default_size if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(lines):
        raise ConfigError(
            f"vocab size for {name!r} must be an integer in [1, {len(lines)}] (the file's line count), got {size!r}"
        )
    taken = lines[-size:]
    return [line.strip() for line in taken if line.strip()], size


@dataclass(frozen=True)
class PublishedMean:
    """A published image mean: the mean of L2-normalised image embeddings of one model and its weights."""

    file: str
    dim: int
    weights: str  # in words, for the message that says which mean is in use


# open_clip (architecture, pretrained tag) -> the reference's mean for exactly those weights. The -quickgelu
# architectures name the same OpenAI checkpoints with the activation they were trained with.
PUBLISHED_MEANS: dict[tuple[str, str], PublishedMean] = {
    ("ViT-B-32", "openai"): PublishedMean("means_clip_ViT-B-32_image.npy", 512, "OpenAI CLIP ViT-B/32"),
    ("ViT-B-32-quickgelu", "openai"): PublishedMean("means_clip_ViT-B-32_image.npy", 512, "OpenAI CLIP ViT-B/32"),
    ("ViT-B-16", "openai"): PublishedMean("means_clip_ViT-B-16_image.npy", 512, "OpenAI CLIP ViT-B/16"),
    ("ViT-B-16-quickgelu", "openai"): PublishedMean("means_clip_ViT-B-16_image.npy", 512, "OpenAI CLIP ViT-B/16"),
    ("RN50", "openai"): PublishedMean("means_clip_RN50_image.npy", 1024, "OpenAI CLIP RN50"),
    ("RN50-quickgelu", "openai"): PublishedMean("means_clip_RN50_image.npy", 1024, "OpenAI CLIP RN50"),
    ("ViT-B-32", "laion2b_s34b_b79k"): PublishedMean("means_open_clip_ViT-B-32_image.npy", 512,
                                                     "open_clip ViT-B-32 laion2b_s34b_b79k"),
}


def published_mean(model: str, pretrained: object) -> PublishedMean | None:
    """The published image mean for ``model`` with the open_clip tag ``pretrained``, or None.

    Only an exact tag matches: a local checkpoint file or random weights get none, because nothing says they are
    the weights the mean was measured on.

    >>> published_mean("ViT-B-32", "openai").file
    'means_clip_ViT-B-32_image.npy'
    >>> published_mean("ViT-B-32", "random") is None
    True
    """
    if not isinstance(model, str) or not isinstance(pretrained, str):
        return None
    return PUBLISHED_MEANS.get((model, pretrained))


def load_published_mean(spec: PublishedMean) -> np.ndarray:
    """The mean vector (float32, (dim,)), read without pickle."""
    with _data(spec.file).open("rb") as fh:
        arr = np.load(fh, allow_pickle=False)
    arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    if arr.shape != (spec.dim,):  # pragma: no cover - guards the vendored files
        raise ConfigError(f"published mean {spec.file} has shape {arr.shape}, expected ({spec.dim},)")
    return arr
