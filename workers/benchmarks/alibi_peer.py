"""Runs alibi-detect's online MMD or LSDD detector over streams handed over as .npy files, for `bench drift`'s peer
comparison (workers/benchmarks/peers.py starts it with the python of an isolated virtual environment).

It imports only numpy, torch and alibi_detect, never this project: alibi-detect (BSL-licensed) pins numpy, pillow
and transformers to versions the project cannot use, so it lives in its own environment and talks through files.

Usage: ``python alibi_peer.py SPEC.json OUT.json``. SPEC names the detector ("mmd" or "lsdd"), ``ert`` (items),
``window``, ``n_bootstraps``, ``seed``, ``threads``, the reference (an (R, d) .npy) and the streams, each
``{"path": S.npy, "onset": int or null}``. Every stream starts from a fresh detector state; after each alarm the
state is reset (as an operator would after a false alarm), so a stream can carry several. OUT gets, per stream,
the 1-based item index of every alarm, and the timings.
"""

from __future__ import annotations

import json
import sys
import time


def _mmd_thresholds_batched(self) -> None:
    """alibi-detect's ``MMDDriftOnlineTorch._configure_thresholds`` with its per-bootstrap Python loops done as
    batched tensor operations: the same permutations drawn in the same order, the same statistic per bootstrap and
    window, the same quantile and the same discarding of bootstraps that crossed an earlier window's threshold. The
    original takes ~9 minutes for 6,000 bootstraps on a shared 2-core machine (600,000 small tensor operations);
    ``check`` mode compares the two on a small problem."""
    import torch
    from alibi_detect.utils.pytorch import quantile

    w_size = self.window_size
    etw_size = 2 * w_size - 1
    rw_size = self.n - etw_size
    perms = [torch.randperm(self.n) for _ in range(self.n_bootstraps)]
    y_all = torch.stack([perm[-etw_size:] for perm in perms])  # (B, 2W - 1): the extended test windows
    k = self.k_xx
    k_full_sum = k.sum() - k.diagonal().sum()
    col_total = k.sum(0)
    diag = k.diagonal()
    mmds = torch.empty((len(y_all), w_size), dtype=k.dtype)
    for lo in range(0, len(y_all), 256):
        y = y_all[lo:lo + 256]
        k_yy = k[y[:, :, None], y[:, None, :]]  # (b, 2W - 1, 2W - 1)
        d_yy = diag[y]
        k_xy_cols = col_total[y] - k_yy.sum(1)  # column sums over the sub-reference rows only
        k_xx_sums = (k_full_sum - (k_yy.sum((1, 2)) - d_yy.sum(1)) - 2 * k_xy_cols.sum(1)) / (rw_size * (rw_size - 1))
        k_xy_cols = k_xy_cols / (rw_size * w_size)
        for w in range(w_size):
            k_yy_w = k_yy[:, w:w + w_size, w:w + w_size].sum((1, 2)) - d_yy[:, w:w + w_size].sum(1)
            mmds[lo:lo + len(y), w] = (k_xx_sums + k_yy_w / (w_size * (w_size - 1))
                                       - 2 * k_xy_cols[:, w:w + w_size].sum(1))
    thresholds = []
    alive = torch.ones(len(y_all), dtype=torch.bool)
    for w in range(w_size):
        thresholds.append(quantile(mmds[alive, w], 1 - self.fpr))
        alive &= mmds[:, w] < thresholds[-1]
    self.thresholds = thresholds


def _lsdd_by_means(permed_lsdds):
    """alibi-detect's ``permed_lsdds`` fed the per-bootstrap mean rows instead of the stacked (B, R, centres) kernel
    rows it would average itself (2.9 GB per window step at 6,000 bootstraps): each bootstrap's sub-reference and
    test-window means come from one 0/1-mask matrix product, and the original then runs unchanged on a matrix of
    those means, bootstrap b's x being row b and its y row B + b."""
    import torch

    def means(k_all_c, perms):
        idx = torch.stack(list(perms))
        mask = torch.zeros((len(idx), len(k_all_c)), dtype=k_all_c.dtype)
        mask.scatter_(1, idx, 1.0)
        return (mask @ k_all_c) / idx.shape[1]

    def wrapped(k_all_c, x_perms, y_perms, H, H_lam_inv=None, lam_rd_max=0.2, return_unpermed=False):
        if return_unpermed:  # not used by the online detector; keep the original path for it
            return permed_lsdds(k_all_c, x_perms, y_perms, H, H_lam_inv, lam_rd_max, return_unpermed)
        b = len(x_perms)
        rows = torch.cat([means(k_all_c, x_perms), means(k_all_c, y_perms)])
        return permed_lsdds(rows, [torch.tensor([i]) for i in range(b)], [torch.tensor([b + i]) for i in range(b)],
                            H, H_lam_inv=H_lam_inv, lam_rd_max=lam_rd_max)

    return wrapped


def _detector(name: str, reference, *, ert: float, window: int, n_bootstraps: int, batched: bool = True):
    if name == "mmd":
        from alibi_detect.cd import MMDDriftOnline
        from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch

        if batched:
            MMDDriftOnlineTorch._configure_thresholds = _mmd_thresholds_batched

        return MMDDriftOnline(reference, ert=ert, window_size=window, backend="pytorch", n_bootstraps=n_bootstraps,
                              device="cpu", verbose=False)
    if name == "lsdd":
        import alibi_detect.cd.pytorch.lsdd_online as lsdd_online
        from alibi_detect.cd import LSDDDriftOnline
        from alibi_detect.utils.pytorch import permed_lsdds

        lsdd_online.permed_lsdds = _lsdd_by_means(permed_lsdds) if batched else permed_lsdds

        return LSDDDriftOnline(reference, ert=ert, window_size=window, backend="pytorch", n_bootstraps=n_bootstraps,
                               device="cpu", verbose=False)
    raise ValueError(f"detector must be 'mmd' or 'lsdd', got {name!r}")


def _run_stream(det, stream, onset):
    """Feed ``stream`` item by item; alarms are the 1-based indices of the items at which the detector fired. With
    an onset, the stream stops at the first alarm after it (the delay is then known)."""
    det.reset_state()
    alarms = []
    t0 = time.perf_counter()
    for i in range(len(stream)):
        if det.predict(stream[i], return_test_stat=False)["data"]["is_drift"]:
            alarms.append(i + 1)
            det.reset_state()
            if onset is not None and i + 1 > onset:
                break
    return {"items": i + 1 if len(stream) else 0, "alarms": alarms, "predict_s": time.perf_counter() - t0}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: alibi_peer.py SPEC.json OUT.json", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    torch.manual_seed(int(spec["seed"]))
    np.random.seed(int(spec["seed"]))
    torch.set_num_threads(int(spec.get("threads", 1)))
    reference = np.load(spec["reference"], allow_pickle=False).astype(np.float32)
    t0 = time.perf_counter()
    det = _detector(spec["detector"], reference, ert=float(spec["ert"]), window=int(spec["window"]),
                    n_bootstraps=int(spec["n_bootstraps"]))
    configure_s = time.perf_counter() - t0
    streams = []
    for s in spec["streams"]:
        x = np.load(s["path"], allow_pickle=False).astype(np.float32)
        if x.ndim != 2 or x.shape[1] != reference.shape[1]:
            raise ValueError(f"stream {s['path']}: expected (n, {reference.shape[1]}), got shape {x.shape}")
        streams.append({"onset": s["onset"], **_run_stream(det, x, s["onset"])})
    import alibi_detect

    out = {"detector": spec["detector"], "alibi_detect": alibi_detect.__version__, "torch": torch.__version__,
           "configure_s": configure_s, "streams": streams}
    with open(argv[1], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
