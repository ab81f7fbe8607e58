"""The pipeline's worker core, usable without Ray: raw stream items (image bytes or captions) in, sparse concept
codes plus dead letters out (decode -> preprocess -> encode -> center -> decompose -> partial for the aggregator).

The Ray actor in ``workers/actors.py`` is this object plus ``@ray.remote``; tests and ``bench pipeline --no-ray`` use it
directly.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.concepts.images import DEFAULT_MAX_PIXELS
from monitor.errors import BadInput, ConfigError
from monitor.records import SparseCodes
from workers.items import DeadLetter, ItemBatch, ItemColumns, Partial, WorkItem

__all__ = ["WorkerConfig", "Worker"]


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker builds its encoder and dictionary; keyword names follow ``monitor.concepts.decomposer.create_decomposer``."""

    model: str = "minilm"
    pretrained: str | None = None
    vocab: str | None = None
    template: str | None = None
    mean: str | None = None
    l1: float = 0.25
    target_l0: float | None = None
    device: str | None = None
    cache_dir: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_threads: int = 0  # 0: min(4, cpu count)
    encode_batch: int = 64
    torch_threads: int = 0  # 0: leave torch's default
    device_decode: str = "auto"  # decode JPEGs on the encoder's device: "auto" (on for CUDA), "on", "off"
    solver: str = "lasso"  # "off": random codes instead of solving (control-plane benchmarks only)
    max_payload_bytes: int = 64 * 1024 * 1024  # a path payload above this is dead-lettered (payload_too_large)
    path_root: str | None = None  # path payloads must resolve under this directory (None: anywhere)
    batch_timeout_s: float = 300.0  # items not decoded by then are dead-lettered (timeout); 0: no limit

    def __post_init__(self) -> None:
        if not (self.l1 >= 0 and math.isfinite(self.l1)):
            raise ConfigError(f"l1 must be a finite number >= 0, got {self.l1!r}")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be >= 1, got {self.max_pixels!r}")
        if self.encode_batch < 1:
            raise ConfigError(f"encode_batch must be >= 1, got {self.encode_batch!r}")
        if self.decode_threads < 0:
            raise ConfigError(f"decode_threads must be >= 0, got {self.decode_threads!r}")
        if self.device_decode not in ("auto", "on", "off"):
            raise ConfigError(f"device_decode must be 'auto', 'on' or 'off', got {self.device_decode!r}")
        if self.max_payload_bytes < 1:
            raise ConfigError(f"max_payload_bytes must be >= 1, got {self.max_payload_bytes!r}")
        if not (self.batch_timeout_s >= 0 and math.isfinite(self.batch_timeout_s)):
            raise ConfigError(f"batch_timeout_s must be a finite number >= 0, got {self.batch_timeout_s!r}")

    def check(self) -> None:
        """Check what can be checked without loading the model, so a typo fails in a second, before Ray and the
        workers start: the model name, a local checkpoint or model directory, the vocabulary, the template and the
        mean file. Raises ConfigError naming the setting."""
        from pathlib import Path

        from monitor.concepts.dictionary import load_mean
        from monitor.concepts.vocab import check_template, resolve_vocabulary

        model = self.model
        if model.startswith("st:"):
            if not Path(model[3:]).is_dir():
                raise ConfigError(f"model: {model!r} names no directory (st:/path/to/a/sentence-transformers/dir)")
        elif not (model.lower() == "minilm" or model == "null" or model.startswith("null:")):
            import difflib

            from monitor.concepts.encoders import list_models

            known = list_models()
            if model not in known:
                close = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"model: unknown model {model!r}{hint} (valid: minilm, st:/path/to/dir or an "
                                  f"open_clip architecture, see `python -c 'import open_clip; "
                                  f"print(open_clip.list_models())'`)")
        pretrained = self.pretrained
        if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
            if not Path(pretrained).expanduser().is_file():
                raise ConfigError(f"pretrained: no checkpoint file {pretrained!r}")
        resolve_vocabulary(self.vocab)
        check_template(self.template)
        if self.mean is not None and self.mean != "vocab":
            load_mean(self.mean)

    def decomposer_kwargs(self) -> dict[str, Any]:
        return dict(
            model=self.model,
            pretrained=self.pretrained,
            vocab=self.vocab,
            template=self.template,
            mean=self.mean,
            l1=self.l1,
            target_l0=self.target_l0,
            device=self.device,
            cache_dir=self.cache_dir,
            solver=self.solver,
        )


class Worker:
    """Turns batches of :class:`WorkItem` into a :class:`Partial`.

    Decoding and preprocessing run on a thread pool (PIL releases the GIL while decoding) while the encoder works
    on the chunk before, so decode overlaps encode. Per-item problems become dead letters; nothing raises for one
    bad item.
    """

    def __init__(self, encoder: Any, decomposer: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 decode_threads: int = 0, encode_batch: int = 64, device_decode: str = "auto",
                 max_payload_bytes: int = 64 * 1024 * 1024, path_root: str | None = None,
                 batch_timeout_s: float = 300.0) -> None:
        enc_dim = int(getattr(encoder, "dim"))
        space = getattr(decomposer, "dim", None)
        if space is not None and int(space) != enc_dim:
            raise ConfigError(f"dictionary dimension {int(space)} does not match encoder dimension {enc_dim}")
        self.encoder = encoder
        self.decomposer = decomposer
        self.max_pixels = int(max_pixels)
        self.encode_batch = int(encode_batch)
        self.max_payload_bytes = int(max_payload_bytes)
        self.path_root = path_root
        self.batch_timeout_s = float(batch_timeout_s)
        threads = decode_threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        device = getattr(encoder, "device", None)
        on_cuda = getattr(device, "type", str(device)) == "cuda"
        self._device_plan = None
        # an encoder that embeds raw payloads (the null encoder) needs no decoding, so no pool round trip either
        self._raw_payloads = callable(getattr(encoder, "encode_payloads", None))
        if not self._raw_payloads and (device_decode == "on" or (device_decode == "auto" and on_cuda)):
            self._device_plan = _tensor_preprocess_plan(encoder)

    @classmethod
    def create(cls, config: WorkerConfig) -> "Worker":
        """Load the encoder and dictionary named by ``config`` (once; the actor keeps the worker for its life)."""
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        from monitor.concepts.decomposer import create_decomposer

        encoder, decomposer = create_decomposer(**config.decomposer_kwargs())
        return cls(encoder, decomposer, max_pixels=config.max_pixels, decode_threads=config.decode_threads,
                   encode_batch=config.encode_batch, device_decode=config.device_decode,
                   max_payload_bytes=config.max_payload_bytes, path_root=config.path_root,
                   batch_timeout_s=config.batch_timeout_s)

    @property
    def concept_names(self) -> list[str]:
        return list(self.decomposer.concept_names)

    @property
    def concept_space(self) -> str:
        return str(self.decomposer.concept_space)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- per-item preparation (runs on the pool) ------------------------------------------------------------------

    def _prepare_image(self, payload: Any):
        from monitor.concepts.images import decode_image

        if isinstance(payload, str):  # a path column / path field: read it here, on the worker, with limits
            from workers.sources.paths import read_path_payload

            payload = read_path_payload(payload, max_bytes=self.max_payload_bytes, root=self.path_root)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise BadInput("bad_record", f"image payload must be bytes, got {type(payload).__name__}")
        image = decode_image(bytes(payload), max_pixels=self.max_pixels)
        return self.encoder.preprocess(image)

    @staticmethod
    def _prepare_text(payload: Any) -> str:
        if isinstance(payload, (bytes, bytearray)):
            try:
                payload = bytes(payload).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInput("bad_text", f"caption is not UTF-8: {exc}") from None
        if not isinstance(payload, str):
            raise BadInput("bad_text", f"caption must be a string, got {type(payload).__name__}")
        if not payload.strip():
            raise BadInput("bad_text", "caption is empty")
        return payload

    @staticmethod
    def _prepare_raw(payload: Any):
        if payload is None or (isinstance(payload, (bytes, bytearray, str)) and len(payload) == 0):
            raise BadInput("empty", "payload is empty")
        if not isinstance(payload, (bytes, bytearray, str)):
            raise BadInput("bad_record", f"payload must be bytes or a string, got {type(payload).__name__}")
        return payload

    def _prepare(self, item: WorkItem):
        """One item ready for the encoder (decoded pixels, a caption, a raw payload) or the BadInput that explains
        why not."""
        return self._prepare_payload(item.payload, item.kind, item.error)

    def _prepare_payload(self, payload: Any, kind: str, error: tuple[str, str] | None):
        try:
            if error is not None:
                raise BadInput(*error)
            if self._raw_payloads and kind in ("image", "text"):
                return self._prepare_raw(payload)
            if kind == "text":
                return self._prepare_text(payload)
            if kind == "image":
                return self._prepare_image(payload)
            raise BadInput("bad_record", f"item kind must be 'image' or 'text', got {kind!r}")
        except BadInput as exc:
            return exc
        except Exception as exc:  # a decoder bug on one file must not stop the stream
            return BadInput("other", f"{type(exc).__name__}: {exc}")

    def _prepare_rows(self, batch: ItemBatch, kinds: list[str]) -> list[Any]:
        """Every row of a batch that needs no decoding (captions, or raw payloads for an encoder that embeds them)
        prepared in place, without a :class:`WorkItem` per row."""
        payloads, errors = batch.payloads, batch.errors
        if self._raw_payloads and not errors and isinstance(batch.kinds, str) and batch.kinds in ("image", "text"):
            # the common case, one comparison per row: a non-empty bytes/str payload is taken as it is, anything
            # else goes the long way, which names what is wrong with it
            return [p if type(p) in _RAW_TYPES and len(p) else self._prepare_payload(p, batch.kinds, None)
                    for p in payloads]
        return [self._prepare_payload(p, k, errors.get(j)) for j, (p, k) in enumerate(zip(payloads, kinds))]

    # -- the batch path -------------------------------------------------------------------------------------------

    def process(self, batch: "list[WorkItem] | ItemBatch | Any") -> Partial:
        """Decode, encode and decompose one batch; returns the batch's :class:`Partial`.

        ``batch`` is a list of :class:`WorkItem`, an :class:`ItemBatch`, or a descriptor the worker resolves itself
        (anything with ``load() -> ItemBatch``: rows of a Parquet file, claimed Redis entries), so the driver never
        carries the payloads.

        The batch is handled as rows of its columns: captions and raw payloads (the null encoder) are prepared
        straight from the payload list, and only image decoding (the pool, the device path) works on one
        :class:`WorkItem` per row, whose cost is nothing next to decoding the image."""
        t0 = time.perf_counter()
        t_read = 0.0
        if not isinstance(batch, (list, tuple, ItemBatch)):
            batch = batch.load()
            t_read = time.perf_counter() - t0
        items: list[WorkItem] | None = None
        if not isinstance(batch, ItemBatch):
            items = list(batch)
            batch = ItemBatch.from_items(items)
        n = len(batch)
        kinds = batch.kinds if isinstance(batch.kinds, list) else [batch.kinds] * n
        dead: list[DeadLetter] = []
        ready: list[tuple[int, Any]] = []  # (row, prepared input)
        on_device: list[tuple[int, Any]] = []
        rows: list[int] = list(range(n))
        t_device = 0.0
        if self._device_plan is not None:
            items = items if items is not None else batch.work_items()
            row_of = {id(it): j for j, it in enumerate(items)}
            pairs, rest = self._device_prepare(items)
            on_device = [(row_of[id(it)], x) for it, x in pairs]
            rows = [row_of[id(it)] for it in rest]
            t_device = time.perf_counter() - t0
        texts_only = self._raw_payloads or all(kinds[j] == "text" for j in rows)
        futures = None
        if texts_only:  # captions (and raw payloads) need no decoding: skip the pool round trip
            prepared = self._prepare_rows(batch, kinds) if len(rows) == n else [
                self._prepare_payload(batch.payloads[j], kinds[j], batch.errors.get(j)) for j in rows]
        else:
            items = items if items is not None else batch.work_items()
            futures = [self._pool.submit(self._prepare, items[j]) for j in rows]
            prepared = None
        t_decode = 0.0
        t_encode = 0.0
        embeddings: list[Any] = []  # torch tensors, left on the encoder's device
        kept_rows: list[int] = []

        def flush(chunk: list[tuple[int, Any]]) -> None:
            nonlocal t_encode
            if not chunk:
                return
            te = time.perf_counter()
            text = kinds[chunk[0][0]] == "text"
            try:
                embeddings.append(self._encode([x for _, x in chunk], text=text))
                kept_rows.extend(j for j, _ in chunk)
            except Exception:  # find the item that breaks the encoder; the others go on
                for j, x in chunk:
                    try:
                        embeddings.append(self._encode([x], text=text))
                        kept_rows.append(j)
                    except Exception as exc:
                        dead.append(_dead(batch, j, "other", f"encoder failed: {type(exc).__name__}: {exc}"))
            t_encode += time.perf_counter() - te

        for i in range(0, len(on_device), self.encode_batch):  # JPEGs already decoded on the device
            flush(on_device[i:i + self.encode_batch])
        td = time.perf_counter()
        deadline = None if not self.batch_timeout_s else time.monotonic() + self.batch_timeout_s
        for i, j in enumerate(rows):
            x = prepared[i] if prepared is not None else _result_by(futures[i], deadline, self.batch_timeout_s)
            if isinstance(x, BadInput):
                dead.append(_dead(batch, j, x.reason, x.detail))
                continue
            # encode images and texts separately; a batch normally holds one kind
            if ready and kinds[ready[-1][0]] != kinds[j]:
                flush(ready)
                ready = []
            ready.append((j, x))
            if len(ready) >= self.encode_batch:
                t_decode += time.perf_counter() - td
                flush(ready)
                ready = []
                td = time.perf_counter()
        t_decode += time.perf_counter() - td
        flush(ready)

        codes = None
        columns = ItemColumns.empty()
        n_nonconv = 0
        t_solve = 0.0
        if embeddings:
            ts = time.perf_counter()
            import torch

            emb = torch.cat(embeddings, dim=0) if len(embeddings) > 1 else embeddings[0]
            codes, kept = self._decompose(emb, kept_rows, dead, batch)
            t_solve = time.perf_counter() - ts
            chosen = [kept_rows[r] for r in kept.tolist()]
            # every row kept in order (the usual batch): the batch's own columns, no copy
            columns = batch.columns if chosen == list(range(n)) else batch.columns.take(chosen)
            if codes is not None and codes.converged is not None:
                n_nonconv = int((~np.asarray(codes.converged, dtype=bool)).sum())
        return Partial(
            codes=codes,
            columns=columns,
            dead_letters=dead,
            n_nonconverged=n_nonconv,
            timings={
                "read_s": t_read,
                "decode_wait_s": t_decode + t_device,
                "encode_s": t_encode,
                "decompose_s": t_solve,
                "total_s": time.perf_counter() - t0,
            },
        )

    def _device_prepare(self, items: list[WorkItem]) -> tuple[list[tuple[WorkItem, Any]], list[WorkItem]]:
        """Decode complete baseline RGB/gray JPEGs on the encoder's device (nvJPEG on a GPU) and preprocess them there;
        returns (item, tensor) pairs and the items left for the PIL path, which also classifies every bad one."""
        import io
        import warnings

        import torch
        from PIL import Image

        with warnings.catch_warnings():
            # torchvision 0.29 flags its image IO as deprecated in favour of torchcodec; it is still the nvJPEG path
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

        chosen, rest = [], []
        for it in items:
            data = it.payload
            if (it.kind != "image" or it.error is not None or not isinstance(data, (bytes, bytearray))
                    or data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9"):
                rest.append(it)
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:  # header only: size and colour mode
                    w, h, mode, fmt = im.size[0], im.size[1], im.mode, im.format
            except Exception:
                rest.append(it)
                continue
            if fmt != "JPEG" or mode not in ("RGB", "L") or not 0 < w * h <= self.max_pixels:
                rest.append(it)
                continue
            chosen.append((it, torch.frombuffer(bytearray(data), dtype=torch.uint8)))
        if not chosen:
            return [], rest
        plan = self._device_plan
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                images = decode_jpeg([d for _, d in chosen], mode=ImageReadMode.RGB, device=plan["device"],
                                     apply_exif_orientation=True)
            out = list(zip((it for it, _ in chosen), _tensor_preprocess_batch(images, plan)))
        except Exception:  # one undecodable file fails the whole call: let PIL sort them out
            return [], rest + [it for it, _ in chosen]
        return out, rest

    def _decompose(self, emb, rows: list[int], dead: list[DeadLetter], batch: ItemBatch
                   ) -> tuple[SparseCodes | None, np.ndarray]:
        """Decompose the batch; if the solver raises, solve row by row so only the failing items are dead-lettered."""
        try:
            # non-convergence is counted per item (metrics), not warned about once per batch
            result = self.decomposer.decompose(emb, warn=False)
        except Exception:
            parts, kept = [], []
            for r in range(emb.shape[0]):
                try:
                    res = self.decomposer.decompose(emb[r:r + 1], warn=False)
                except Exception as exc:
                    dead.append(_dead(batch, rows[r], "solver_failed", f"{type(exc).__name__}: {exc}"))
                    continue
                if res.rejected:
                    dead.append(_dead(batch, rows[r], "bad_embedding", str(res.rejected[0][1])))
                    continue
                parts.append(res.codes)
                kept.append(r)
            return (SparseCodes.concat(parts) if parts else None), np.asarray(kept, dtype=np.int64)
        for row, detail in result.rejected:
            dead.append(_dead(batch, rows[int(row)], "bad_embedding", str(detail)))
        return result.codes, np.asarray(result.kept, dtype=np.int64)

    def _encode(self, inputs: list[Any], *, text: bool):
        import torch

        with torch.inference_mode():
            if self._raw_payloads:
                out = self.encoder.encode_payloads(inputs)
            elif text:
                out = self.encoder.encode_texts(inputs)
            else:
                out = self.encoder.encode_preprocessed(torch.stack(inputs))
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out, dtype=np.float32))
        return out.float()


def _tensor_preprocess_plan(encoder: Any) -> dict | None:
    """Read resize / crop / normalise parameters from an open_clip-style torchvision pipeline, so JPEGs decoded on the
    device get the same preprocessing; None when the pipeline holds anything else (then PIL does it all)."""
    transforms = getattr(getattr(encoder, "_preprocess", None), "transforms", None)
    if not transforms:
        return None
    plan: dict[str, Any] = {"device": getattr(encoder, "device", "cpu")}
    for t in transforms:
        name = type(t).__name__
        if name == "Resize" and isinstance(t.size, (int, list, tuple)):
            plan["size"] = t.size if isinstance(t.size, int) else list(t.size)
            plan["interpolation"] = t.interpolation
        elif name == "CenterCrop":
            plan["crop"] = list(t.size)
        elif name == "Normalize":
            plan["mean"], plan["std"] = list(t.mean), list(t.std)
        elif name not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "function", "_convert_to_rgb"):
            return None
    return plan if {"size", "crop", "mean", "std"} <= set(plan) else None


def _tensor_preprocess_batch(images: list, plan: dict) -> list:
    """Preprocess decoded images in groups of equal size (a camera stream's frames share one), one batched resize /
    crop / normalise per group: per image, the kernel launches and Python dispatch cost more than the work itself
    and capped the GPU worker at a fifth of nvJPEG's rate. Returns one tensor per image, in input order."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    out: list[Any] = [None] * len(images)
    for rows in groups.values():
        batch = _tensor_preprocess(torch.stack([images[i] for i in rows]), plan)
        for j, i in enumerate(rows):
            out[i] = batch[j]
    return out


def _tensor_preprocess(image, plan: dict):
    """uint8 (3, H, W) or (N, 3, H, W) tensor -> normalised float tensor, as the encoder's PIL pipeline would
    produce."""
    from torchvision.transforms.v2 import functional as TF

    x = TF.resize(image, plan["size"], interpolation=plan["interpolation"], antialias=True)
    x = TF.center_crop(x, plan["crop"])
    x = x.float().div_(255.0)
    return TF.normalize(x, plan["mean"], plan["std"])


def _result_by(future, deadline: float | None, timeout_s: float):
    """The prepared item, or a ``timeout`` BadInput when it is not ready by ``deadline`` (a read that hangs on a
    network file system must not hold the whole batch, and with it the stream, forever)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    try:
        return future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        return BadInput("timeout", f"not decoded within the batch deadline of {timeout_s:g} s")


def _dead(batch: ItemBatch, row: int, reason: str, detail: str) -> DeadLetter:
    cols = batch.columns
    return DeadLetter(item_id=cols.ids[row], stream=cols.stream_names[int(cols.stream_index[row])],
                      timestamp=float(cols.timestamps[row]), reason=reason, detail=detail,
                      ref=batch.refs[row] if batch.refs else "")


_RAW_TYPES = (bytes, bytearray, str)
