"""Arguments shared by ``run``, ``backfill`` and ``demo``: model, decomposition, windows, Ray placement."""

from __future__ import annotations

import argparse
import re

from monitor.concepts.images import DEFAULT_MAX_PIXELS
from monitor.drift.detectors import DriftConfig
from monitor.errors import ConfigError

_DEFAULT_ERT = DriftConfig.ert

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_model_arguments(p: argparse.ArgumentParser, *, default_model: str = "minilm") -> None:
    g = p.add_argument_group("model and decomposition")
    g.add_argument("--model", default=default_model,
                   help="encoder: 'minilm' (captions) or an open_clip architecture such as ViT-B-32 (default: "
                        "%(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag (needs a network once) or a local checkpoint path")
    g.add_argument("--vocab", default=None, help="vocabulary name or file of concepts (one per line)")
    g.add_argument("--template", default=None, help="prompt template for concepts, e.g. 'a photo of {}'")
    g.add_argument("--mean", default=None, help="modality mean (.npy) used to center embeddings")
    g.add_argument("--l1", type=float, default=0.25, help="l1 penalty of the decomposition (default: %(default)s)")
    g.add_argument("--target-l0", type=float, default=None, help="pick the penalty to reach this many concepts")
    g.add_argument("--cache-dir", default=None, help="where dictionaries are cached")
    g.add_argument("--max-pixels", type=int, default=None,
                   help="images above this many pixels are dead-lettered as decompression bombs (default: "
                        f"{DEFAULT_MAX_PIXELS:,}, as decompose)")


def add_window_arguments(p: argparse.ArgumentParser, *, window: str = "1h", reference_images: int = 10_000) -> None:
    g = p.add_argument_group("windows and drift")
    g.add_argument("--window", default=window,
                   help="tumbling window: an image count (e.g. 1000) or event time with a unit (30s, 5m, 1h, 1d); "
                        "default %(default)s")
    g.add_argument("--window-view", type=int, default=1,
                   help="closed windows merged into the tested view (default: %(default)s)")
    g.add_argument("--allowed-lateness", type=float, default=0.0, help="seconds a time window waits for late events")
    g.add_argument("--reference", choices=("fixed", "trailing", "history"), default="fixed",
                   help="fixed: the stream's first --reference-images images; trailing: the windows before; "
                        "history: the windows stored between --reference-from and --reference-to")
    g.add_argument("--reference-from", default=None,
                   help="start of the history reference period (ISO-8601, e.g. 2026-01-01T00:00Z, or unix seconds)")
    g.add_argument("--reference-to", default=None, help="end (exclusive) of the history reference period")
    g.add_argument("--reference-store", default=None,
                   help="history store holding the reference period (default: --history)")
    g.add_argument("--reference-images", type=int, default=reference_images,
                   help="size of the fixed reference (default: %(default)s)")
    g.add_argument("--ert", type=float, default=None,
                   help="expected number of items between false alarms (per stream, all concepts together; "
                        f"default: {_DEFAULT_ERT:g})")
    g.add_argument("--max-streams", type=int, default=None,
                   help="streams monitored at most; items of further streams are dead-lettered as stream_limit "
                        "(default 64; bounds memory and the metrics' label set)")
    g.add_argument("--min-prevalence-change", type=float, default=None,
                   help="a prevalence alarm also needs an absolute change of at least this fraction, e.g. 0.05 for "
                        "5 percentage points (default: 0, off)")


def add_ray_arguments(p: argparse.ArgumentParser, *, workers: int = 1, batch_size: int = 64) -> None:
    g = p.add_argument_group("Ray")
    g.add_argument("--workers", type=int, default=workers, help="worker actors (default: %(default)s)")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs each worker requests (default: 1 when the cluster has GPUs, else CPU only)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs each worker requests (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=batch_size, help="items per batch (default: %(default)s)")
    g.add_argument("--max-in-flight", type=int, default=0,
                   help="batches read but not yet committed (backpressure; default 2 per worker)")
    g.add_argument("--ray-address", default=None, help="Ray cluster address; without it a local Ray is started")


def parse_window(spec: str) -> dict:
    """'1000' -> count windows of 1000 images; '30s'/'5m'/'1h'/'1d' -> event-time windows."""
    s = str(spec).strip().lower()
    if re.fullmatch(r"\d+", s):
        return {"kind": "count", "size": int(s)}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", s)
    if m:
        return {"kind": "time", "size": float(m.group(1)) * _UNITS[m.group(2)]}
    raise ConfigError(f"--window must be an image count (e.g. 1000) or a duration with unit s/m/h/d (e.g. 1h), "
                      f"got {spec!r}")


def monitor_config(args: argparse.Namespace, *, min_prevalence_change: float | None = None):
    """The library's ``MonitorConfig`` from the window and drift flags; a bad value is a ConfigError naming it."""
    from monitor.drift.monitor import DriftConfig, MonitorConfig, ReferenceConfig, WindowConfig

    window = parse_window(args.window)
    try:
        drift = {}
        if args.ert is not None:
            drift["ert"] = args.ert
        if min_prevalence_change:
            drift["min_prevalence_change"] = min_prevalence_change
        max_streams = getattr(args, "max_streams", None)
        if max_streams is not None and max_streams < 1:
            raise ConfigError(f"--max-streams must be >= 1, got {max_streams}")
        return MonitorConfig(
            window=WindowConfig(kind=window["kind"], size=window["size"], view=args.window_view,
                                allowed_lateness=args.allowed_lateness),
            reference=ReferenceConfig(mode=args.reference, n_images=args.reference_images),
            drift=DriftConfig(**drift), **({} if max_streams is None else {"max_streams": max_streams}))
    except ValueError as exc:
        raise ConfigError(f"windows and drift options: {exc}") from None


def history_reference(args: argparse.Namespace):
    """The :class:`~workers.config.HistoryReference` of ``--reference history`` (None otherwise); the flags are
    checked here so a bad value is a clear start-up error naming the flag."""
    from monitor.history.store import parse_time
    from workers.config import HistoryReference

    given = [f for f, v in (("--reference-from", args.reference_from), ("--reference-to", args.reference_to),
                            ("--reference-store", args.reference_store)) if v is not None]
    if args.reference != "history":
        if given:
            raise ConfigError(f"{given[0]} needs --reference history (got --reference {args.reference})")
        return None
    if args.reference_from is None or args.reference_to is None:
        raise ConfigError("--reference history needs --reference-from and --reference-to (ISO-8601 or unix seconds)")
    store = args.reference_store or getattr(args, "history", None)
    if not store:
        raise ConfigError("--reference history needs a history store: pass --reference-store DIR (or --history DIR)")
    bounds = []
    for flag, value in (("--reference-from", args.reference_from), ("--reference-to", args.reference_to)):
        try:
            bounds.append(parse_time(value, name=flag))
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    if not bounds[0] < bounds[1]:
        raise ConfigError(f"--reference-from must be before --reference-to, got {args.reference_from!r} and "
                          f"{args.reference_to!r}")
    return HistoryReference(store=str(store), start=bounds[0], end=bounds[1])


def worker_config(args: argparse.Namespace):
    from workers.core import WorkerConfig

    kwargs = dict(model=args.model, pretrained=args.pretrained, vocab=args.vocab, template=args.template,
                  mean=args.mean, l1=args.l1, target_l0=args.target_l0, cache_dir=args.cache_dir)
    if args.max_pixels is not None:
        kwargs["max_pixels"] = args.max_pixels
    return WorkerConfig(**kwargs)


def pipeline_config(args: argparse.Namespace, **fixed):
    """The one constructor of a run's :class:`~workers.config.PipelineConfig` from parsed flags, for ``run`` and
    ``backfill``; ``fixed`` sets what the command decides itself (checkpoint job, Pushgateway job name, ...)."""
    from workers.config import PipelineConfig

    metrics_port = getattr(args, "metrics_port", None)
    return PipelineConfig(
        source=args.source, worker=worker_config(args),
        monitor=monitor_config(args, min_prevalence_change=getattr(args, "min_prevalence_change", None)),
        workers=args.workers, gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
        batch_size=args.batch_size, max_in_flight=args.max_in_flight,
        metrics_port=None if metrics_port is None or metrics_port < 0 else metrics_port,
        history=args.history, write_codes=args.write_codes, dead_letter=args.dead_letter,
        ray_address=args.ray_address, kind=args.kind, stream=args.stream,
        reference_history=history_reference(args), pushgateway=args.pushgateway, **fixed)
