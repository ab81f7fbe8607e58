"""``splice-monitor demo``: the whole pipeline offline in about a minute. A caption stream from a street camera turns
snowy halfway; captions go through the real MiniLM text model on Ray workers, the exporter serves Prometheus metrics,
and alarms are printed as they fire, naming the concepts that drifted."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace

from workers.cli.settings import add_settings_arguments


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="offline demo: a caption stream whose topic shifts, through the real MiniLM model",
                       description=__doc__, allow_abbrev=False)
    p.add_argument("--captions", type=int, default=3000, help="captions in the stream (default: %(default)s)")
    p.add_argument("--shift-at", type=int, default=None, help="caption index where the topic shifts (default: half)")
    p.add_argument("--seed", type=int, default=0, help="seed of the caption generator (default: %(default)s)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="centre with the vocabulary's text mean instead of a mean calibrated on the reference "
                        "captions (ignored with --mean)")
    p.add_argument("--serve", type=float, default=0.0,
                   help="keep the exporter up this many seconds after the stream ends (for a Prometheus scrape)")
    p.add_argument("--json", action="store_true",
                   help="print the summary (with the alarms and notices) as one JSON object on stdout")
    add_settings_arguments(p, "demo")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from monitor.synthetic.captions import CaptionStream, write_parquet
    from workers.cli.output import Console
    from workers.cli.settings import resolve
    from workers.driver import Pipeline

    resolved = resolve("demo", args)
    s = resolved.settings
    console = Console("demo", quiet=s.quiet, json_output=args.json, log_level=s.log_level)
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON object only

    def tell(message: str) -> None:
        print(f"demo: {message}", file=out, flush=True)

    stream = CaptionStream(n=args.captions, shift_at=args.shift_at, seed=args.seed)
    tell(f"{stream.n} captions from {stream.camera}; topics {stream.before} -> {stream.after} at caption "
         f"{stream.shift_at}")
    with tempfile.TemporaryDirectory(prefix="splice-demo-") as tmp:
        uri = write_parquet(stream, os.path.join(tmp, "captions.parquet"))
        mean = s.mean
        if mean is None:
            mean = "vocab"
            if not args.no_calibrate:
                n_cal = min(s.reference_images, stream.shift_at, stream.n)
                console.phase(f"calibrating the modality mean on the first {n_cal} captions with MiniLM")
                mean = calibrate_mean(stream, n_cal, os.path.join(tmp, "caption-mean.npy"))
                tell(f"modality mean calibrated on the first {n_cal} (reference) captions")
        config = resolved.pipeline_config(source=uri, worker=replace(resolved.worker_config(), mean=mean),
                                          linger_s=args.serve)

        def started(info: dict) -> None:
            console.started(info)
            addr = info.get("metrics_address")
            if addr:
                tell(f"Prometheus metrics at http://{addr[0]}:{addr[1]}/metrics")

        summary = Pipeline(config, on_alarm=console.alarm, on_started=started, on_phase=console.phase,
                           on_status=console.status, status_every_s=s.status_every).run(handle_signals=True)
    rising_falling = {}
    for direction, label in (("up", "rising"), ("down", "falling")):
        best: dict[str, float] = {}
        for a in summary.alarms:
            if a.concept and a.direction == direction and a.state == "firing":
                best[a.concept] = max(best.get(a.concept, 0.0), abs(a.effect_size))
        rising_falling[label] = sorted(best, key=best.get, reverse=True)[:12]
    console.summary(summary, **{f"{k}_concepts": v for k, v in rising_falling.items()})
    if not args.json:
        for label, top in rising_falling.items():
            if top:
                print(f"{label} concepts (largest effect first): {', '.join(top)}")
    return console.exit_code(summary)


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
