"""``splice-monitor demo``: the whole pipeline offline in about a minute. A caption stream from a street camera turns
snowy halfway; captions go through the real MiniLM text model on Ray workers, the exporter serves Prometheus metrics,
and alarms are printed as they fire, naming the concepts that drifted."""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from workers.cli.options import add_ray_arguments


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="offline demo: a caption stream whose topic shifts, through the real MiniLM model",
                       description=__doc__)
    p.add_argument("--captions", type=int, default=3000, help="captions in the stream (default: %(default)s)")
    p.add_argument("--shift-at", type=int, default=None, help="caption index where the topic shifts (default: half)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", default=None, help="concept vocabulary (default: the built-in English one)")
    p.add_argument("--l1", type=float, default=0.4,
                   help="l1 penalty of the decomposition (default: %(default)s; sparser codes than the run default "
                        "keep rare concepts from riding along with the new topic)")
    p.add_argument("--window", type=int, default=250, help="images per window (default: %(default)s)")
    p.add_argument("--reference-images", type=int, default=1000,
                   help="the first N captions form the reference (default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9400,
                   help="Prometheus exporter port (0: a free port; -1: off; default %(default)s)")
    p.add_argument("--history", default=None, help="also write windows and alarms to this history directory")
    p.add_argument("--cache-dir", default=None, help="dictionary cache (default: ~/.cache/splice-monitor)")
    p.add_argument("--min-prevalence-change", type=float, default=0.05,
                   help="a prevalence alarm also needs an absolute change of at least this fraction (default: "
                        "%(default)s, i.e. 5 percentage points; 0 turns the floor off)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="centre with the vocabulary's text mean instead of a mean calibrated on the reference "
                        "captions")
    p.add_argument("--serve", type=float, default=0.0,
                   help="keep the exporter up this many seconds after the stream ends (for a Prometheus scrape)")
    add_ray_arguments(p, workers=2, batch_size=64)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from monitor.errors import ConfigError
    from monitor.drift.monitor import DriftConfig, MonitorConfig, ReferenceConfig, WindowConfig
    from monitor.synthetic.captions import CaptionStream, write_parquet
    from workers.cli.run import print_alarm
    from workers.config import PipelineConfig
    from workers.core import WorkerConfig
    from workers.driver import run_pipeline

    stream = CaptionStream(n=args.captions, shift_at=args.shift_at, seed=args.seed)
    print(f"demo: {stream.n} captions from {stream.camera}; topics {stream.before} -> {stream.after} at caption "
          f"{stream.shift_at}", flush=True)
    with tempfile.TemporaryDirectory(prefix="splice-demo-") as tmp:
        uri = write_parquet(stream, os.path.join(tmp, "captions.parquet"))
        mean = "vocab"
        if not args.no_calibrate:
            n_cal = min(args.reference_images, stream.shift_at, stream.n)
            mean = calibrate_mean(stream, n_cal, os.path.join(tmp, "caption-mean.npy"))
            print(f"demo: modality mean calibrated on the first {n_cal} (reference) captions", flush=True)
        try:
            monitor = MonitorConfig(window=WindowConfig(kind="count", size=args.window),
                                    reference=ReferenceConfig(mode="fixed", n_images=args.reference_images),
                                    drift=DriftConfig(min_prevalence_change=args.min_prevalence_change))
        except ValueError as exc:
            raise ConfigError(f"windows and drift options: {exc}") from None
        config = PipelineConfig(
            source=uri, worker=WorkerConfig(model="minilm", vocab=args.vocab, l1=args.l1, cache_dir=args.cache_dir,
                                            mean=mean),
            monitor=monitor, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size, max_in_flight=args.max_in_flight,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port, history=args.history,
            ray_address=args.ray_address, linger_s=args.serve)
        t0 = time.perf_counter()

        def started(info: dict) -> None:
            addr = info.get("metrics_address")
            print(f"demo: {info['workers']} worker(s) ready after {time.perf_counter() - t0:.0f} s "
                  f"({info['n_concepts']} concepts, {info['encoder']})", flush=True)
            if addr:
                print(f"demo: Prometheus metrics at http://{addr[0]}:{addr[1]}/metrics", flush=True)

        summary = run_pipeline(config, handle_signals=True, on_alarm=print_alarm, on_started=started)
    print(summary.format())
    for direction, label in (("up", "rising"), ("down", "falling")):
        best: dict[str, float] = {}
        for a in summary.alarms:
            if a.concept and a.direction == direction and a.state == "firing":
                best[a.concept] = max(best.get(a.concept, 0.0), abs(a.effect_size))
        top = sorted(best, key=best.get, reverse=True)[:12]
        if top:
            print(f"{label} concepts (largest effect first): {', '.join(top)}")
    return 0


def calibrate_mean(stream, n: int, path: str) -> str:
    """Save the MiniLM mean of the stream's first ``n`` captions to ``path``; returns the path.

    The vocabulary's text mean sits far from where scene captions live, so after centring every caption leans the
    same way and rare concepts (names, places) pick up that shared direction and wobble into alarms; centring on the
    reference captions themselves removes the shared part, as ``splice-monitor calibrate`` does for a real stream."""
    import itertools

    import torch

    from monitor.concepts.dictionary import MeanAccumulator, save_mean
    from monitor.concepts.encoders import create_encoder

    torch.set_num_threads(min(2, torch.get_num_threads()))
    encoder = create_encoder("minilm", device="cpu")
    texts = [c.text for c in itertools.islice(iter(stream), n)]
    acc = MeanAccumulator(encoder.dim)
    for lo in range(0, len(texts), 256):
        acc.update(encoder.encode_texts(texts[lo:lo + 256]))
    save_mean(path, acc.get(), encoder_id=encoder.id, n=acc.n, modality="text", model="minilm")
    return path
