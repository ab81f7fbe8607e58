"""SpLiCE decomposition of embeddings into sparse nonnegative word-concept weights: centre with the modality mean,
solve the certified nonnegative lasso on the concept dictionary, recompose, name and intervene on concepts.

:func:`create_decomposer` is the one factory the CLI and the Ray workers use: model name -> (encoder, decomposer).
"""

from __future__ import annotations

from monitor.errors import UncalibratedMeanWarning  # noqa: F401  (re-exported for callers of this module)
import difflib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monitor.concepts.dictionary import ConceptDictionary, build_dictionary, load_mean
from monitor.errors import ConfigError
from monitor.records import SparseCodes

__all__ = [
    "Decomposer",
    "BatchDecomposition",
    "Intervention",
    "create_decomposer",
    "UncalibratedMeanWarning",
    "warn_uncalibrated",
    "CALIBRATE_HINT",
    "SOLVERS",
]

# "lasso": the certified nonnegative lasso; "off": random sparse codes at no cost (control-plane benchmarks only)
SOLVERS = ("lasso", "off")
# Active concepts per row of the random codes of solver="off": the middle of SpLiCE's usual 5-30.
RANDOM_CODE_L0 = 20

CALIBRATE_HINT = (
    "splice-monitor calibrate --model MODEL --pretrained WEIGHTS SAMPLE_IMAGES_OR_CAPTIONS... -o mean.npy, "
    "then pass --mean mean.npy"
)
# Below this norm an embedding (or its centred version) has no direction to decompose.
_EPS = 1e-8



_warned_spaces: set[tuple[str, str]] = set()


@dataclass
class BatchDecomposition:
    """Result of :meth:`Decomposer.decompose` on n input rows.

    ``codes`` holds one row per *kept* input, in input order; ``kept[i]`` is the input row of ``codes`` row i.
    ``rejected`` lists ``(input row, detail)`` for NaN/inf/zero embeddings (dead-letter reason "bad_embedding").
    ``gap``, ``kkt`` and ``converged`` are the solver's certificate per kept row.
    """

    codes: SparseCodes
    kept: np.ndarray  # int64 (k,)
    rejected: list[tuple[int, str]]
    gap: np.ndarray  # float32 (k,) relative duality gap
    kkt: np.ndarray  # float32 (k,)
    converged: np.ndarray  # bool (k,)
    iterations: int = 0
    n_inputs: int = 0

    @property
    def reason(self) -> str:
        return "bad_embedding"


@dataclass
class Intervention:
    """Embeddings recomposed after zeroing ``suppressed`` concepts, with the edited weights."""

    embeddings: Any  # torch.Tensor (n, d), unit norm
    weights: Any  # torch.Tensor (n, c)
    suppressed: list[int] = field(default_factory=list)
    removed_weight: np.ndarray | None = None  # float32 (n,) total weight taken out per row


class Decomposer:
    """Decompose embeddings from one encoder over one concept dictionary.

    ``mean`` is the modality mean (d,) of L2-normalised embeddings of the inputs' modality (see
    ``splice-monitor calibrate``); None centres with a zero mean (no centring) and warns once per concept space.
    ``l1`` is the lasso penalty in the reference ADMM scaling; ``target_l0`` instead picks the penalty per row to
    reach that many active concepts. ``solver_options`` go to :class:`monitor.concepts.solver.NonnegLasso`.
    ``solver="off"`` skips the solve and returns random sparse codes (``RANDOM_CODE_L0`` concepts per row, no
    certificate): a zero-cost stand-in that lets ``bench pipeline --solver off`` measure everything around it.
    """

    def __init__(
        self,
        dictionary: ConceptDictionary,
        mean=None,
        *,
        l1: float = 0.25,
        target_l0: int | None = None,
        device=None,
        mean_source: str | None = None,
        solver: str = "lasso",
        **solver_options: Any,
    ) -> None:
        import torch

        from monitor.concepts.solver import NonnegLasso

        if solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        if not isinstance(dictionary, ConceptDictionary):
            raise TypeError(f"dictionary must be a ConceptDictionary, got {type(dictionary).__name__}")
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not math.isfinite(l1) or l1 <= 0:
            raise ConfigError(f"l1 must be a finite number > 0, got {l1!r}")
        if target_l0 is not None:
            if isinstance(target_l0, float) and target_l0.is_integer():
                target_l0 = int(target_l0)
            n_c = dictionary.n_concepts
            if isinstance(target_l0, bool) or not isinstance(target_l0, int) or not 1 <= target_l0 <= n_c:
                raise ConfigError(
                    f"target_l0 must be an integer in [1, {dictionary.n_concepts}] or None, got {target_l0!r}"
                )
        self.dictionary = dictionary
        self.l1 = float(l1)
        self.target_l0 = target_l0
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._D = dictionary.tensor(device=self.device)
        self._solver = NonnegLasso(self._D, device=self.device, **solver_options)
        if mean is None:
            self._mu = torch.zeros(dictionary.dim, device=self.device)
            self.mean_source = "zero (uncalibrated)"
            warn_uncalibrated(dictionary.concept_space, "a zero mean (no centring of inputs)")
        else:
            mu = torch.as_tensor(np.asarray(mean.detach().cpu() if hasattr(mean, "detach") else mean,
                                            dtype=np.float32)).reshape(-1)
            if mu.shape[0] != dictionary.dim:
                raise ConfigError(
                    f"mean has shape ({mu.shape[0]},) but the dictionary has shape {tuple(dictionary.vectors.shape)}; "
                    "the modality mean must come from the same encoder as the dictionary"
                )
            if not torch.isfinite(mu).all():
                raise ConfigError("mean contains NaN or inf")
            self._mu = mu.to(self.device)
            self.mean_source = mean_source or "given"

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def concept_names(self) -> list[str]:
        return self.dictionary.concept_names

    @property
    def concept_space(self) -> str:
        return self.dictionary.concept_space

    @property
    def n_concepts(self) -> int:
        return self.dictionary.n_concepts

    @property
    def dim(self) -> int:
        return self.dictionary.dim

    @property
    def mean(self):
        return self._mu

    # -- decomposition --------------------------------------------------------------------------------------------

    def center(self, embeddings):
        """normalize(normalize(z) - mu) for a (n, d) tensor already on ``self.device``."""
        import torch.nn.functional as F

        return F.normalize(F.normalize(embeddings, dim=-1, eps=_EPS) - self._mu, dim=-1, eps=_EPS)

    def decompose(self, embeddings, *, warn: bool = True) -> BatchDecomposition:
        """Decompose (n, d) raw embeddings (torch or numpy). Rows with NaN/inf or (near-)zero norm are rejected,
        not solved; everything else gets a row in ``codes`` with its fidelity cos(recomposed, input)."""
        import torch
        import torch.nn.functional as F

        Z = self._as_matrix(embeddings)
        n = Z.shape[0]
        # A NaN or inf entry always makes its row's sum NaN or inf, so a finite sum clears a row with one reduction;
        # only the rows it does not clear are checked entry by entry. (isfinite(Z).all(dim=1) over the whole batch
        # took ~10 ms for 1,024 x 512 on one CPU thread, most of the worker's time with the null encoder.)
        finite = torch.isfinite(Z.sum(dim=1))
        if bool(finite.all()):
            Zs = Z
        else:
            unclear = (~finite).nonzero().flatten()
            finite[unclear] = torch.isfinite(Z[unclear]).all(dim=1)
            Zs = torch.where(finite[:, None], Z, torch.zeros((), device=Z.device, dtype=Z.dtype))
        norms = torch.linalg.vector_norm(Zs, dim=1)
        ok = finite & (norms > _EPS)
        unit = Zs / norms.clamp_min(_EPS)[:, None]
        centred_norm = torch.linalg.vector_norm(unit - self._mu, dim=1)
        ok_centred = ok & (centred_norm > 1e-6)
        rejected: list[tuple[int, str]] = []
        for i in (~ok_centred).nonzero().flatten().tolist():
            if not bool(finite[i]):
                what = "NaN" if bool(torch.isnan(Z[i]).any()) else "inf"
                rejected.append((i, f"embedding row {i} contains {what} values"))
            elif not bool(ok[i]):
                rejected.append((i, f"embedding row {i} has zero norm ({float(norms[i]):.3g})"))
            else:
                rejected.append((i, f"embedding row {i} equals the modality mean after normalising: nothing to decompose"))
        kept = ok_centred.nonzero().flatten()
        k = int(kept.numel())
        if k == 0:
            empty = SparseCodes.from_dense(np.zeros((0, self.n_concepts), np.float32), np.zeros(0, np.float32),
                                           np.zeros(0, np.float32), converged=np.zeros(0, bool))
            return BatchDecomposition(empty, np.zeros(0, np.int64), rejected, np.zeros(0, np.float32),
                                      np.zeros(0, np.float32), np.zeros(0, bool), 0, n)
        if self.solver == "off":
            return self._random_codes(unit[kept], kept.cpu().numpy().astype(np.int64), rejected, n)
        Zk = unit[kept]
        centred = self.center(Zk)
        if self.target_l0 is not None:
            res = self._solver.solve_target_l0(centred, self.target_l0, warn=warn)
        else:
            res = self._solver.solve(centred, self.l1, warn=warn)
        idx, vals = _sparse_rows(res.weights.to(self.device, torch.float32))
        # Dᵀw from the few active rows of D: O(n·l0·d) instead of another full O(n·c·d) matmul
        dtw = torch.einsum("nk,nkd->nd", vals, self._D[idx])
        recomposed = F.normalize(F.normalize(dtw, dim=-1, eps=_EPS) + self._mu, dim=-1, eps=_EPS)
        fidelity = (recomposed * Zk).sum(dim=-1)
        codes = _codes(idx, vals, fidelity, res.l1, res.converged, self.n_concepts)
        return BatchDecomposition(
            codes=codes,
            kept=kept.cpu().numpy().astype(np.int64),
            rejected=rejected,
            gap=res.gap.detach().cpu().float().numpy(),
            kkt=res.kkt.detach().cpu().float().numpy(),
            converged=res.converged.detach().cpu().numpy().astype(bool),
            iterations=int(res.iterations),
            n_inputs=n,
        )

    def _random_codes(self, unit, kept: np.ndarray, rejected: list[tuple[int, str]], n: int) -> BatchDecomposition:
        """solver="off": ``RANDOM_CODE_L0`` distinct concepts per row (one from each of that many equal strides of
        the dictionary, so no row repeats a concept and no per-row loop is needed), random positive weights and
        fidelities. Nothing is certified: gap and KKT are NaN and ``converged`` is unknown (None in the codes).

        The draws are a hash of the row's embedding (``unit``, the kept rows): an item gets the same code on any
        worker, and different items independent ones. One seeded generator per process made every worker replay
        the same sequence, so with two workers consecutive batches carried identical codes, a dependence the drift
        tests rightly flagged (~140 false alarms in 40,000 items of the control-plane benchmark)."""
        m, c = len(kept), self.n_concepts
        k = min(RANDOM_CODE_L0, c)
        stride = c // k
        u = _uniform_draws(unit.detach().cpu().numpy(), 2 * k + 1)
        idx = np.arange(k, dtype=np.int64) * stride + np.minimum((u[:, :k] * stride).astype(np.int64), stride - 1)
        codes = SparseCodes(
            indptr=np.arange(m + 1, dtype=np.int64) * k,
            indices=idx.astype(np.int32).reshape(-1),
            values=(0.01 + 0.29 * u[:, k:2 * k]).astype(np.float32).reshape(-1),
            fidelity=(0.6 + 0.35 * u[:, 2 * k]).astype(np.float32),
            l1=np.full(m, self.l1, dtype=np.float32),
            n_concepts=c,
        )
        nan = np.full(m, np.nan, dtype=np.float32)
        return BatchDecomposition(codes, kept, rejected, nan, nan.copy(), np.ones(m, bool), 0, n)

    def recompose(self, weights):
        """ẑ = normalize(normalize(Dᵀw) + μ) for weights (n, c) / (c,) tensors or arrays, or SparseCodes."""
        import torch.nn.functional as F

        W = self._as_weights(weights)
        return F.normalize(F.normalize(W @ self._D, dim=-1, eps=_EPS) + self._mu, dim=-1, eps=_EPS)

    def fidelity(self, embeddings, weights):
        """cos(recompose(weights), normalize(embeddings)) per row."""
        import torch.nn.functional as F

        Z = F.normalize(self._as_matrix(embeddings), dim=-1, eps=_EPS)
        return self._fidelity(self._as_weights(weights), Z)

    def _fidelity(self, W, unit_Z):
        return (self.recompose(W) * unit_Z).sum(dim=-1)

    def top_concepts(self, codes_row, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` largest (concept name, weight) pairs of one decomposition, largest first.

        ``codes_row`` is ``codes.row(i)`` (indices, values), a dense weight vector (c,), or a one-row SparseCodes.
        """
        if isinstance(codes_row, SparseCodes):
            if len(codes_row) != 1:
                raise ValueError(f"top_concepts takes one row; got SparseCodes with {len(codes_row)} rows")
            codes_row = codes_row.row(0)
        if isinstance(codes_row, tuple):
            idx, val = (np.asarray(a) for a in codes_row)
        else:
            dense = np.asarray(codes_row.detach().cpu() if hasattr(codes_row, "detach") else codes_row).reshape(-1)
            if dense.shape[0] != self.n_concepts:
                raise ValueError(f"weight vector has {dense.shape[0]} entries, expected n_concepts={self.n_concepts}")
            idx = np.nonzero(dense > 0)[0]
            val = dense[idx]
        order = np.argsort(-val, kind="stable")[: max(int(k), 0)]
        names = self.concept_names
        return [(names[int(idx[j])], float(val[j])) for j in order]

    def concept_index(self, name: str) -> int:
        """Row of ``name`` in the dictionary; an unknown name is a ConfigError listing close matches."""
        vocab = self.dictionary.vocabulary
        if name in vocab:
            return vocab.index(name)
        close = difflib.get_close_matches(name, vocab.concepts, n=8, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "no close matches"
        raise ConfigError(f"concept {name!r} is not in the vocabulary ({len(vocab)} concepts; {hint})")

    def intervene(self, z_or_weights, suppress: Sequence[str] | str) -> Intervention:
        """Zero the named concepts and recompose. Accepts raw embeddings (n, d) or (d,), which are decomposed
        first, or weights (n, c) / SparseCodes / BatchDecomposition."""
        import torch

        if isinstance(suppress, str):
            suppress = [suppress]
        idx = [self.concept_index(s) for s in suppress]
        if isinstance(z_or_weights, BatchDecomposition):
            W = self._as_weights(z_or_weights.codes)
        elif isinstance(z_or_weights, SparseCodes):
            W = self._as_weights(z_or_weights)
        else:
            X = torch.as_tensor(np.asarray(z_or_weights) if not hasattr(z_or_weights, "detach") else z_or_weights)
            last = X.shape[-1]
            if last == self.dim and last != self.n_concepts:
                result = self.decompose(X if X.ndim == 2 else X[None, :])
                if result.rejected:
                    raise ConfigError(f"cannot intervene on bad embeddings: {result.rejected}")
                W = self._as_weights(result.codes)
            else:
                W = self._as_weights(X)
        W = W.clone()
        removed = W[:, idx].sum(dim=1) if idx else torch.zeros(W.shape[0], device=W.device)
        if idx:
            W[:, idx] = 0
        return Intervention(self.recompose(W), W, idx, removed.cpu().numpy().astype(np.float32))

    # -- input checks ---------------------------------------------------------------------------------------------

    def _as_matrix(self, embeddings):
        import torch

        if not hasattr(embeddings, "detach"):
            embeddings = torch.as_tensor(np.asarray(embeddings))
        Z = embeddings.detach()
        if Z.ndim == 1:
            Z = Z[None, :]
        if Z.ndim != 2:
            raise ConfigError(f"embeddings must be a (n, d) matrix, got shape {tuple(Z.shape)}")
        if Z.shape[1] != self.dim:
            raise ConfigError(
                f"embedding dimension mismatch: embeddings have shape {tuple(Z.shape)} but the dictionary has shape "
                f"{tuple(self.dictionary.vectors.shape)} (encoder {self.dictionary.encoder_id}); build the dictionary "
                "with the same model that produces the embeddings"
            )
        return Z.to(self.device, torch.float32)

    def _as_weights(self, weights):
        import torch

        if isinstance(weights, BatchDecomposition):
            weights = weights.codes
        if isinstance(weights, SparseCodes):
            if weights.n_concepts != self.n_concepts:
                raise ConfigError(f"codes have {weights.n_concepts} concepts, dictionary has {self.n_concepts}")
            weights = weights.to_dense()
        if not hasattr(weights, "detach"):
            weights = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        W = weights.detach().to(self.device, torch.float32)
        if W.ndim == 1:
            W = W[None, :]
        if W.ndim != 2 or W.shape[1] != self.n_concepts:
            raise ConfigError(f"weights must have shape (n, {self.n_concepts}), got {tuple(W.shape)}")
        return W


def _sparse_rows(W):
    """(idx, vals), both (n, k) with k = the largest row l0: each row's active concepts in ascending concept order,
    padded with (0, 0.0). Only these cross to the host, never the dense (n, c) matrix."""
    import torch

    n = W.shape[0]
    k = int((W > 0).sum(dim=1).max()) if n else 0
    if k == 0:
        z = torch.zeros((n, 0), device=W.device)
        return z.long(), z
    vals, idx = W.topk(k, dim=1)
    active = vals > 0
    key = torch.where(active, idx, torch.full_like(idx, W.shape[1]))  # padding sorts last
    key, order = key.sort(dim=1)
    vals = torch.where(key < W.shape[1], vals.gather(1, order), torch.zeros((), device=W.device))
    idx = torch.where(key < W.shape[1], key, torch.zeros_like(key))
    return idx, vals


def _codes(idx, vals, fidelity, l1, converged, n_concepts: int) -> SparseCodes:
    active = (vals > 0).cpu().numpy()
    idx_h = idx.cpu().numpy()
    vals_h = vals.cpu().numpy()
    indptr = np.zeros(len(active) + 1, dtype=np.int64)
    np.cumsum(active.sum(axis=1), out=indptr[1:])
    return SparseCodes(
        indptr=indptr,
        indices=idx_h[active].astype(np.int32),
        values=vals_h[active].astype(np.float32),
        fidelity=fidelity.detach().cpu().numpy().astype(np.float32),
        l1=l1.detach().cpu().numpy().astype(np.float32).reshape(-1),
        n_concepts=n_concepts,
        converged=converged.detach().cpu().numpy().astype(bool),
    )


def warn_uncalibrated(space: str, what: str) -> None:
    """Warn (once per process for this concept space and default) that no calibrated mean is in use."""
    key = (space, what)
    if key in _warned_spaces:
        return
    _warned_spaces.add(key)
    warnings.warn(
        f"no calibrated modality mean: decomposing with {what}. Fidelity and sparsity are best with the mean of "
        f"your own data; estimate it with: {CALIBRATE_HINT}",
        UncalibratedMeanWarning,
        stacklevel=3,
    )


def resolve_mean(
    mean: str | Path | Any | None,
    *,
    model: str,
    pretrained: Any,
    encoder_id: str,
    dim: int,
    supports_images: bool,
    vocab_mean: np.ndarray,
) -> tuple[Any, str | None, str | None]:
    """Which modality mean to centre with: ``(mean or None, where it came from, uncalibrated default or None)``.

    In order: ``"vocab"`` -> the vocabulary's text mean; a path -> a calibrated mean file (checked against the
    encoder id and dimension); an array -> as given; None -> for a text-only encoder the vocabulary's text mean, for
    an image encoder SpLiCE's published image mean when ``model``/``pretrained`` are weights it was measured on
    (:func:`monitor.concepts.published.published_mean`), else a zero mean. The third item names the uncalibrated
    default in use (for :func:`warn_uncalibrated`); it is None when the mean is calibrated or published.
    """
    from monitor.concepts.published import load_published_mean, published_mean

    if isinstance(mean, str) and mean == "vocab":
        return vocab_mean, "vocabulary text mean", None
    if isinstance(mean, (str, Path)):
        mu, info = load_mean(mean, encoder_id=encoder_id, dim=dim)
        if info.get("encoder_id") is None:
            warnings.warn(
                f"mean file {mean} has no .json sidecar naming its encoder; make sure it was calibrated with "
                f"{encoder_id} (`splice-monitor calibrate` writes the sidecar)",
                UserWarning,
                stacklevel=3,
            )
        return mu, str(mean), None
    if mean is not None:
        return mean, "given", None
    if not supports_images:
        return vocab_mean, "vocabulary text mean (uncalibrated)", "the vocabulary's text mean"
    spec = published_mean(model, pretrained)
    if spec is not None and spec.dim == dim:
        return load_published_mean(spec), f"SpLiCE's published image mean for {spec.weights} ({spec.file})", None
    return None, None, "a zero mean (no centring of inputs)"


def create_decomposer(
    model: str = "minilm",
    pretrained: str | None = None,
    *,
    vocab=None,
    vocab_size: int | None = None,
    template: str | None = None,
    mean: str | Path | Any | None = None,
    l1: float = 0.25,
    target_l0: int | None = None,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    solver: str = "lasso",
    progress: bool = True,
    **solver_options: Any,
) -> tuple[Any, Decomposer]:
    """Build (encoder, decomposer) by name: load the model, build or load the cached dictionary, pick the mean.

    ``vocab``: None for the default vocabulary, a name (``laion``, ``laion-bigrams``, ``mscoco``, ``builtin``,
    optionally ``NAME:SIZE``), a file path, a list of concepts or a Vocabulary; ``vocab_size`` takes the last N
    lines of a published vocabulary (SpLiCE's convention). ``mean``: see :func:`resolve_mean`; the uncalibrated
    defaults warn once, saying how to calibrate; ``decomposer.mean_source`` says which mean is in use.
    ``progress=False`` keeps the model-load and dictionary-build bars off stderr. ``solver``: "lasso" (the
    certified solver) or "off" (random codes, for control-plane benchmarks; see :class:`Decomposer`).
    """
    from monitor.concepts.encoders import create_encoder
    from monitor.concepts.vocab import resolve_vocabulary

    vocabulary = resolve_vocabulary(vocab, size=vocab_size)
    encoder = create_encoder(model, pretrained, device=device, batch_size=batch_size, precision=precision,
                             progress=progress)
    dictionary = build_dictionary(encoder, vocabulary, template=template, cache_dir=cache_dir, progress=progress)
    if dictionary.dim != encoder.dim:
        raise ConfigError(
            f"dictionary shape {tuple(dictionary.vectors.shape)} does not match encoder {encoder.id} "
            f"(dim {encoder.dim})"
        )
    mu, source, uncalibrated = resolve_mean(
        mean, model=model, pretrained=pretrained, encoder_id=encoder.id, dim=encoder.dim,
        supports_images=encoder.supports_images, vocab_mean=dictionary.vocab_mean,
    )
    if uncalibrated is not None and mu is not None:
        warn_uncalibrated(dictionary.concept_space, uncalibrated)
    # with mu None the Decomposer itself warns about the zero mean
    decomposer = Decomposer(dictionary, mu, l1=l1, target_l0=target_l0, device=encoder.device,
                            mean_source=source, solver=solver, **solver_options)
    return encoder, decomposer


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic): a cheap, well-mixed hash."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform_draws(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform numbers in [0, 1) per row of ``rows`` (float32 embeddings), a pure function of the row's
    bits: one key per row from its first four words, then a counter hashed under that key."""
    words = np.ascontiguousarray(rows[:, :4], dtype=np.float32).view(np.uint32).astype(np.uint64)
    key = _mix64(words[:, 0] | (words[:, 1] << np.uint64(32))) ^ _mix64(words[:, 2] | (words[:, 3] << np.uint64(32)))
    golden = np.uint64(0x9E3779B97F4A7C15)
    h = _mix64(key[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * golden)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
