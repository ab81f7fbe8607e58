"""The two centering artifacts of SpLiCE: the concept dictionary (vocabulary -> text encoder -> L2-normalise ->
subtract the vocabulary mean -> L2-normalise), cached on disk, and the modality mean estimated from the user's data.

Both are stored without pickle: the dictionary as safetensors with its key in the metadata, a mean as ``.npy``
(``allow_pickle=False``) with a JSON sidecar naming the encoder it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from monitor.atomic import atomic_write_bytes
from monitor.errors import ConfigError
from monitor.concepts.progress import progress_bar
from monitor.concepts.vocab import Vocabulary, check_template, resolve_vocabulary

__all__ = [
    "ConceptDictionary",
    "build_dictionary",
    "load_dictionary",
    "default_cache_dir",
    "concept_space_id",
    "MeanAccumulator",
    "save_mean",
    "load_mean",
    "FORMAT_VERSION",
]

FORMAT_VERSION = "1"
CACHE_ENV = "SPLICE_MONITOR_CACHE"


def default_cache_dir() -> Path:
    """``$SPLICE_MONITOR_CACHE`` if set, else ``~/.cache/splice-monitor``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "splice-monitor"


def concept_space_id(encoder_id: str, vocab_hash: str, template: str | None) -> str:
    """Stable id of a concept space: same encoder weights, same vocabulary, same template -> same id.

    >>> concept_space_id("st:m:sha256:0", "abc", None) == concept_space_id("st:m:sha256:0", "abc", None)
    True
    """
    key = json.dumps([encoder_id, vocab_hash, template], ensure_ascii=True)
    return "cs-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ConceptDictionary:
    """A c x d matrix of centred, unit-norm concept directions plus what it was built from.

    ``vocab_mean`` is the mean of the L2-normalised concept embeddings that was subtracted (d,); it doubles as a
    text-modality mean proxy when no calibrated mean is given for captions.
    """

    vectors: np.ndarray  # float32 (c, d), unit rows
    vocabulary: Vocabulary
    encoder_id: str
    template: str | None
    vocab_mean: np.ndarray  # float32 (d,)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.vocabulary):
            raise ConfigError(
                f"dictionary shape {self.vectors.shape} does not match vocabulary of {len(self.vocabulary)} concepts"
            )
        if self.vocab_mean.shape != (self.vectors.shape[1],):
            raise ConfigError(
                f"vocab_mean shape {self.vocab_mean.shape} does not match dictionary {self.vectors.shape}"
            )

    @property
    def n_concepts(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def concept_names(self) -> list[str]:
        return list(self.vocabulary.concepts)

    @property
    def vocab_hash(self) -> str:
        return self.vocabulary.hash

    @property
    def concept_space(self) -> str:
        return concept_space_id(self.encoder_id, self.vocab_hash, self.template)

    def tensor(self, device=None, dtype=None):
        import torch

        return torch.as_tensor(self.vectors, device=device, dtype=dtype or torch.float32)

    def save(self, path: str | Path) -> Path:
        """Write as safetensors (vectors, vocab_mean) with the key, template and concept list in the metadata."""
        from safetensors.numpy import save

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": f"splice-monitor-dictionary/{FORMAT_VERSION}",
            "encoder_id": self.encoder_id,
            "vocab_hash": self.vocab_hash,
            "template": json.dumps(self.template),
            "concepts": json.dumps(list(self.vocabulary.concepts), ensure_ascii=False),
            "vocab_source": self.vocabulary.source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # bytes first, then the one atomic write: concurrent workers building the same dictionary never see a
        # half-written file
        blob = save(
            {"vectors": np.ascontiguousarray(self.vectors, dtype=np.float32),
             "vocab_mean": np.ascontiguousarray(self.vocab_mean, dtype=np.float32)},
            metadata=metadata,
        )
        atomic_write_bytes(path, blob)
        return path


def load_dictionary(path: str | Path) -> ConceptDictionary:
    """Load a dictionary written by :meth:`ConceptDictionary.save` (safetensors; no pickle involved)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dictionary: file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            vectors = fh.get_tensor("vectors")
            vocab_mean = fh.get_tensor("vocab_mean")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"dictionary: {str(path)!r} is not a splice-monitor dictionary file: {exc}") from None
    if not meta.get("format", "").startswith("splice-monitor-dictionary/"):
        raise ConfigError(f"dictionary: {str(path)!r} lacks splice-monitor metadata (format={meta.get('format')!r})")
    vocab = Vocabulary(tuple(json.loads(meta["concepts"])), source=meta.get("vocab_source", str(path)))
    return ConceptDictionary(
        vectors=vectors.astype(np.float32, copy=False),
        vocabulary=vocab,
        encoder_id=meta["encoder_id"],
        template=json.loads(meta["template"]),
        vocab_mean=vocab_mean.astype(np.float32, copy=False),
        meta={"path": str(path), "created": meta.get("created"), "from_cache": True},
    )


def _cache_path(cache_dir: Path, encoder_id: str, vocab_hash: str, template: str | None) -> Path:
    return cache_dir / f"dict-{concept_space_id(encoder_id, vocab_hash, template)[3:]}.safetensors"


def build_dictionary(
    encoder,
    vocab: Vocabulary | str | Path | Iterable[str] | None = None,
    *,
    template: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
) -> ConceptDictionary:
    """Encode the vocabulary (through ``template``) and centre it: normalise rows, subtract their mean, normalise.

    The result is cached under ``cache_dir`` (default :func:`default_cache_dir`) keyed by (encoder id, vocabulary
    hash, template): the same key loads without encoding; any change builds and stores a new file. A build draws a
    progress bar on stderr when it is a terminal (``progress=False`` silences it).
    """
    import torch

    vocab = resolve_vocabulary(vocab)
    check_template(template)
    if not getattr(encoder, "supports_texts", False):
        raise ConfigError(f"encoder {encoder.id} cannot encode texts, so it cannot build a concept dictionary")
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_path(cache_root, encoder.id, vocab.hash, template)
    if use_cache and path.is_file():
        try:
            cached = load_dictionary(path)
        except ConfigError:
            cached = None  # unreadable cache entry: rebuild and overwrite it
        if (
            cached is not None
            and cached.encoder_id == encoder.id
            and cached.vocab_hash == vocab.hash
            and cached.template == template
            and cached.dim == encoder.dim
        ):
            return ConceptDictionary(cached.vectors, vocab, encoder.id, template, cached.vocab_mean, cached.meta)

    t0 = time.perf_counter()
    prompts = vocab.prompts(template)
    chunk = batch_size or max(256, getattr(encoder, "batch_size", 64))
    parts = []
    model = encoder.id.split(":sha256:")[0].split(":file-sha256:")[0]  # the digest only widens the bar
    bar = progress_bar(total=len(prompts), desc=f"building the {len(vocab):,}-concept dictionary ({model})",
                       unit="concept", enabled=progress)
    with bar, torch.inference_mode():
        for lo in range(0, len(prompts), chunk):
            emb = encoder.encode_texts(prompts[lo : lo + chunk]).float().cpu()
            parts.append(torch.nn.functional.normalize(emb, dim=-1))
            bar.update(len(emb))
    unit = torch.cat(parts).double()
    if not torch.isfinite(unit).all():
        raise ConfigError(f"encoder {encoder.id} produced non-finite embeddings for the vocabulary")
    mean = unit.mean(dim=0)
    vectors = torch.nn.functional.normalize(unit - mean, dim=-1)
    if vectors.shape[1] != encoder.dim:
        raise ConfigError(f"encoder {encoder.id} returned dimension {vectors.shape[1]}, expected dim={encoder.dim}")
    result = ConceptDictionary(
        vectors=vectors.float().numpy(),
        vocabulary=vocab,
        encoder_id=encoder.id,
        template=template,
        vocab_mean=mean.float().numpy(),
        meta={"path": str(path), "from_cache": False, "encode_seconds": time.perf_counter() - t0},
    )
    if use_cache:
        try:
            result.save(path)
        except OSError as exc:  # a read-only cache must not stop decomposition; it only costs a re-encode
            import warnings

            warnings.warn(f"could not write the dictionary cache {path} ({exc}); the next run encodes the vocabulary "
                          "again. Point --cache-dir or $SPLICE_MONITOR_CACHE at a writable directory", stacklevel=2)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Modality mean
# --------------------------------------------------------------------------------------------------------------------


class MeanAccumulator:
    """Streaming mean of L2-normalised embeddings (float64 sums); ``update`` per batch, ``get`` the mean, ``merge``
    partial accumulators from parallel workers. Non-finite and zero rows are skipped and counted.

    >>> import numpy as np
    >>> a = MeanAccumulator(); a.update(np.array([[3.0, 4.0], [0.0, 2.0]])); [round(float(v), 2) for v in a.get()]
    [0.3, 0.9]
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self.skipped = 0
        self._sum: np.ndarray | None = None if dim is None else np.zeros(dim)

    def update(self, embeddings) -> None:
        x = _to_numpy(embeddings).astype(np.float64, copy=False)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
        if self._sum is None:
            self.dim = x.shape[1]
            self._sum = np.zeros(self.dim)
        if x.shape[1] != self.dim:
            raise ConfigError(f"embedding dimension {x.shape[1]} does not match the accumulator's dim={self.dim}")
        norms = np.linalg.norm(x, axis=1)
        ok = np.isfinite(x).all(axis=1) & (norms > 1e-12)
        self.skipped += int((~ok).sum())
        self.n += int(ok.sum())
        self._sum += (x[ok] / norms[ok, None]).sum(axis=0)

    def merge(self, other: "MeanAccumulator") -> "MeanAccumulator":
        if other._sum is None:
            return self
        if self._sum is None:
            self.dim, self._sum = other.dim, np.zeros(other.dim)
        if other.dim != self.dim:
            raise ConfigError(f"cannot merge means of dimension {other.dim} and {self.dim}")
        self._sum += other._sum
        self.n += other.n
        self.skipped += other.skipped
        return self

    __iadd__ = merge

    def get(self) -> np.ndarray:
        if self.n == 0 or self._sum is None:
            raise ConfigError("no valid embeddings were seen: cannot estimate a mean")
        return (self._sum / self.n).astype(np.float32)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def save_mean(path: str | Path, mean, *, encoder_id: str, n: int, modality: str, **extra: Any) -> Path:
    """Write ``mean`` (d,) to ``path`` (.npy) and ``path + '.json'`` with the encoder id, count and modality."""
    path = Path(path)
    arr = _to_numpy(mean).astype(np.float32).reshape(-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # np.save on a path would append ".npy" to other suffixes
        np.save(fh, arr, allow_pickle=False)
    info = {
        "format": f"splice-monitor-mean/{FORMAT_VERSION}",
        "encoder_id": encoder_id,
        "dim": int(arr.shape[0]),
        "n": int(n),
        "modality": modality,
        "norm": float(np.linalg.norm(arr)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    _sidecar(path).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path


def load_mean(path: str | Path, *, encoder_id: str | None = None, dim: int | None = None) -> tuple[np.ndarray, dict]:
    """Load a mean saved by :func:`save_mean` (or any 1-D float ``.npy``). With ``encoder_id``, a sidecar naming a
    different encoder is a ConfigError (a mean from another model would mis-centre every embedding); a file without
    sidecar is accepted on its dimension alone and reported as ``encoder_id: None``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"mean: file {str(path)!r} does not exist; create one with "
            "`splice-monitor calibrate --model M --pretrained P YOUR_IMAGES... -o mean.npy`"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - np.load raises ValueError/OSError/EOFError for junk
        raise ConfigError(f"mean: {str(path)!r} is not a .npy array file: {exc}") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[0] != 1):
        raise ConfigError(f"mean: {str(path)!r} must hold a 1-D float vector, got dtype {arr.dtype} shape {arr.shape}")
    arr = arr.reshape(-1).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ConfigError(f"mean: {str(path)!r} contains NaN or inf")
    info: dict[str, Any] = {"encoder_id": None, "path": str(path)}
    side = _sidecar(path)
    if side.is_file():
        try:
            info.update(json.loads(side.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mean: sidecar {str(side)!r} is not valid JSON: {exc}") from None
    if dim is not None and arr.shape[0] != dim:
        raise ConfigError(
            f"mean: {str(path)!r} has shape ({arr.shape[0]},) but the encoder/dictionary dimension is {dim} "
            f"(dictionary shape (*, {dim})); calibrate a mean with the same model"
        )
    if encoder_id is not None and info.get("encoder_id") not in (None, encoder_id):
        raise ConfigError(
            f"mean: {str(path)!r} was calibrated with encoder {info['encoder_id']!r}, not {encoder_id!r}; "
            "recalibrate with `splice-monitor calibrate` for this model"
        )
    return arr, info


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)
