"""``splice-monitor calibrate INPUT... -o mean.npy``: estimate the modality mean (mean of L2-normalised embeddings)
from a sample of your own images or captions, and save it with the id of the encoder that produced it.

INPUTs are read like ``decompose`` reads them: image files, directories of images, ``.txt`` caption files (one per
line) or captions. One calibration covers one modality: mixing images and captions is an error.
"""

from __future__ import annotations

import argparse
import sys

from monitor.cli.decompose import add_model_arguments, collect_inputs


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "calibrate",
        help="estimate the modality mean from your own images or captions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_TEXT_OR_DIR")
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="MEAN.npy",
                        help="where to write the mean (.npy; a .json sidecar records the encoder)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many inputs (first ones, sorted)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from monitor.concepts.dictionary import MeanAccumulator, save_mean
    from monitor.concepts.encoders import create_encoder
    from monitor.errors import BadInput, ConfigError
    from monitor.concepts.images import DEFAULT_MAX_PIXELS, read_image

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    items, saw_dir = collect_inputs(args.inputs, text=args.text)
    missing = [it for it in items if it.kind == "missing"]
    for it in missing:
        print(f"{it.label}: {it.value}", file=sys.stderr)
    items = [it for it in items if it.kind != "missing"]
    kinds = {it.kind for it in items}
    if not items:
        raise ConfigError("no usable inputs: give image files, directories of images, or captions")
    if len(kinds) > 1:
        n_img = sum(it.kind == "image" for it in items)
        raise ConfigError(
            f"inputs mix {n_img} images and {len(items) - n_img} captions; a modality mean is for one modality. "
            "Calibrate images and captions separately (use --text to force captions)"
        )
    modality = kinds.pop()
    if args.limit is not None:
        items = items[: args.limit]
    encoder = create_encoder(args.model, args.pretrained, device=args.device, batch_size=args.batch_size,
                             precision=args.precision, progress=not args.quiet)
    if modality == "image" and not encoder.supports_images:
        raise ConfigError(f"--model {args.model} encodes texts only; it cannot calibrate on images")
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    acc = MeanAccumulator(encoder.dim)
    n_bad = len(missing)
    progress = None
    if saw_dir or len(items) > args.batch_size:
        from tqdm import tqdm

        progress = tqdm(total=len(items), unit=modality, file=sys.stderr, disable=True if args.quiet else None)
    for lo in range(0, len(items), args.batch_size):
        chunk = items[lo : lo + args.batch_size]
        if modality == "text":
            emb = encoder.encode_texts([it.value for it in chunk])
        else:
            tensors = []
            for it in chunk:
                try:
                    tensors.append(encoder.preprocess(read_image(it.value, max_pixels=max_pixels)))
                except BadInput as exc:
                    n_bad += 1
                    print(f"{it.label}: {exc.reason}: {exc.detail}", file=sys.stderr)
            emb = encoder.encode_preprocessed(torch.stack(tensors)) if tensors else None
        if emb is not None:
            before = acc.skipped
            acc.update(emb)
            n_bad += acc.skipped - before
        if progress is not None:
            progress.update(len(chunk))
    if progress is not None:
        progress.close()
    mean = acc.get()
    path = save_mean(args.output, mean, encoder_id=encoder.id, n=acc.n, modality=modality, model=args.model,
                     pretrained=None if args.pretrained is None else str(args.pretrained))
    print(
        f"wrote {modality} mean of {acc.n} embeddings ({n_bad} skipped) to {path} "
        f"[encoder {encoder.id}, dim {mean.shape[0]}, |mean| = {float((mean ** 2).sum() ** 0.5):.4f}]"
    )
    if modality == "image":
        _compare_with_published(args, mean)
    print(f"use it with: splice-monitor decompose --model {args.model}"
          + (f" --pretrained {args.pretrained}" if args.pretrained else "") + f" --mean {path} ...")
    return 0


def _compare_with_published(args: argparse.Namespace, mean) -> None:
    """When SpLiCE publishes a mean for these weights, say how close the user's own one is: both are means of
    L2-normalised image embeddings, so their cosine tells how far this data sits from the reference's."""
    import numpy as np

    from monitor.concepts.published import load_published_mean, published_mean

    spec = published_mean(args.model, args.pretrained)
    if spec is None or spec.dim != mean.shape[0]:
        return
    ref = load_published_mean(spec)
    cos = float(np.dot(ref, mean) / (np.linalg.norm(ref) * np.linalg.norm(mean)))
    print(f"SpLiCE's published mean for {spec.weights} ({spec.file}, |mean| = {float(np.linalg.norm(ref)):.4f}) "
          f"has cosine {cos:.4f} with yours; without --mean, decompose uses the published one")
