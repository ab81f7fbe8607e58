"""``splice-monitor decompose INPUT...``: explain images or captions as sparse word-concept mixtures.

Each INPUT is an image file, a directory (searched recursively for images), a ``.txt`` file (one caption per line),
or else a caption. An argument that does not exist but looks like a file name (ends in an image suffix or ``.txt``)
is reported as a missing file rather than decomposed as text; ``--text`` makes every argument a caption.
Bad items are reported one by one and the rest goes on. Exit status: 0 when at least one input was decomposed
(``--strict``: when all were), 1 otherwise, 2 for configuration errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class InputItem:
    label: str  # what the user sees: a path, "file.txt:3" or the caption itself
    kind: str  # "image" | "text" | "missing"
    value: str  # path for images, caption for texts, detail for missing


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model/device options shared by decompose and calibrate."""
    parser.add_argument("--model", default="minilm",
                        help="open_clip architecture (e.g. ViT-B-32), 'minilm' (default, texts only) "
                             "or st:/path/to/dir")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip pretrained tag or local checkpoint file; 'random' for random weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="inputs encoded per batch (default 32)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="autocast precision (auto: bf16/fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="reject images with more pixels than this as decompression bombs (default: PIL's limit)")
    parser.add_argument("--text", action="store_true", help="treat every INPUT as a caption")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or notices on stderr (bars are drawn only on a terminal anyway)")


def add_vocab_arguments(parser: argparse.ArgumentParser) -> None:
    """--vocab/--vocab-size, shared by decompose and vocab show."""
    parser.add_argument("--vocab", default=None, metavar="NAME_OR_FILE",
                        help="laion, laion-bigrams or mscoco (SpLiCE's own vocabularies), builtin (this project's "
                             "10,000 English words), or a file with one concept per line (default: builtin)")
    parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                        help="use the last N lines of a SpLiCE vocabulary, as the reference does (default 10,000; "
                             "15,000 for laion-bigrams) or the first N builtin words")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "decompose",
        help="decompose images or captions into sparse word concepts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_TEXT_OR_DIR")
    add_model_arguments(parser)
    add_vocab_arguments(parser)
    parser.add_argument("--template", default=None, help="prompt template for concepts, e.g. 'a photo of {}'")
    parser.add_argument("--mean", default=None,
                        help="modality mean from `splice-monitor calibrate` (default: the vocabulary's text mean "
                             "for captions; for images SpLiCE's published mean when the model and weights have one, "
                             "else zero, which warns)")
    sparsity = parser.add_mutually_exclusive_group()
    sparsity.add_argument("--l1", type=float, default=0.25, help="lasso penalty (default 0.25)")
    sparsity.add_argument("--target-l0", type=int, default=None, help="pick the penalty per input to get N concepts")
    parser.add_argument("--top", type=int, default=10, help="concepts to print per input (default 10; 0 = all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input (JSON Lines)")
    parser.add_argument("--cache-dir", default=None, help="dictionary cache (default $SPLICE_MONITOR_CACHE or "
                                                          "~/.cache/splice-monitor)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input failed")
    parser.set_defaults(func=run)
    return parser


def collect_inputs(args_inputs: list[str], *, text: bool) -> tuple[list[InputItem], bool]:
    """Expand the positional arguments into items; the flag says whether a directory was given."""
    from monitor.concepts.images import IMAGE_SUFFIXES

    items: list[InputItem] = []
    saw_dir = False
    for arg in args_inputs:
        if text:
            items.append(InputItem(arg, "text", arg))
            continue
        path = Path(arg)
        if path.is_dir():
            saw_dir = True
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            items.extend(InputItem(str(p), "image", str(p)) for p in found)
            if not found:
                items.append(InputItem(arg, "missing", f"directory {arg} holds no image files"))
        elif path.is_file():
            if path.suffix.lower() == ".txt":
                items.extend(_caption_file(path))
            else:
                items.append(InputItem(arg, "image", arg))
        elif path.suffix.lower() in IMAGE_SUFFIXES | {".txt"}:
            items.append(InputItem(arg, "missing", f"file {arg} does not exist"))
        else:
            items.append(InputItem(arg, "text", arg))
    return items, saw_dir


def _caption_file(path: Path) -> Iterator[InputItem]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        yield InputItem(str(path), "missing", f"cannot read caption file {path}: {exc}")
        return
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield InputItem(f"{path}:{lineno}", "text", line.strip())


def run(args: argparse.Namespace) -> int:
    import torch

    from monitor.errors import BadInput, ConfigError
    from monitor.concepts.images import DEFAULT_MAX_PIXELS, read_image
    from monitor.concepts.decomposer import create_decomposer

    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    items, saw_dir = collect_inputs(args.inputs, text=args.text)
    kinds = {it.kind for it in items}
    mean = args.mean
    if mean is None and kinds <= {"text", "missing"}:
        mean = "vocab"  # captions only: the vocabulary's text mean is the text-side centring (create_decomposer warns)
    encoder, decomposer = create_decomposer(
        args.model, args.pretrained, vocab=args.vocab, vocab_size=args.vocab_size, template=args.template,
        mean=mean, l1=args.l1, target_l0=args.target_l0, device=args.device, cache_dir=args.cache_dir,
        batch_size=args.batch_size, precision=args.precision, progress=not args.quiet,
    )
    if mean == "vocab" and args.mean is None:
        from monitor.concepts.decomposer import warn_uncalibrated

        warn_uncalibrated(decomposer.concept_space, "the vocabulary's text mean")
    if not args.quiet and decomposer.mean_source and decomposer.mean_source.startswith("SpLiCE's published"):
        print(f"mean: {decomposer.mean_source}; pass --mean to use your own", file=sys.stderr)
    if "image" in kinds and not encoder.supports_images:
        raise ConfigError(
            f"--model {args.model} encodes texts only, but image inputs were given "
            f"(e.g. {next(it.label for it in items if it.kind == 'image')}); use an open_clip model such as ViT-B-32"
        )
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    out = sys.stdout
    n_ok = n_bad = 0

    def report_bad(item: InputItem, reason: str, detail: str) -> None:
        nonlocal n_bad
        n_bad += 1
        if args.json:
            out.write(json.dumps({"input": item.label, "kind": item.kind, "ok": False, "reason": reason,
                                  "detail": detail}, ensure_ascii=False) + "\n")
        print(f"{item.label}: {reason}: {detail}", file=sys.stderr)

    progress = None
    if saw_dir:
        from tqdm import tqdm

        progress = tqdm(total=len(items), unit="input", file=sys.stderr, disable=True if args.quiet else None)
    for lo in range(0, len(items), args.batch_size):
        chunk = items[lo : lo + args.batch_size]
        ready: list[InputItem] = []
        tensors = []
        captions = []
        for item in chunk:
            if item.kind == "missing":
                report_bad(item, "other", item.value)
                continue
            if item.kind == "text":
                ready.append(item)
                captions.append(item.value)
                continue
            try:
                tensors.append(encoder.preprocess(read_image(item.value, max_pixels=max_pixels)))
            except BadInput as exc:
                report_bad(item, exc.reason, exc.detail)
                continue
            ready.append(item)
        # keep input order: images first in `ready` would reorder, so encode per kind and scatter back
        embs = [None] * len(ready)
        img_pos = [i for i, it in enumerate(ready) if it.kind == "image"]
        txt_pos = [i for i, it in enumerate(ready) if it.kind == "text"]
        if img_pos:
            e = encoder.encode_preprocessed(torch.stack(tensors))
            for j, i in enumerate(img_pos):
                embs[i] = e[j]
        if txt_pos:
            e = encoder.encode_texts(captions)
            for j, i in enumerate(txt_pos):
                embs[i] = e[j]
        if ready:
            result = decomposer.decompose(torch.stack(embs), warn=False)
            for row, detail in result.rejected:
                report_bad(ready[row], "bad_embedding", detail)
            for r, i in enumerate(result.kept.tolist()):
                _print_one(out, ready[i], decomposer, result, r, args)
                n_ok += 1
        if progress is not None:
            progress.update(len(chunk))
        out.flush()
    if progress is not None:
        progress.close()
    total = n_ok + n_bad
    if n_bad or (total > 1 and not args.quiet):
        print(f"decomposed {n_ok} of {total} inputs ({n_bad} failed)", file=sys.stderr)
    if n_ok == 0 or (args.strict and n_bad):
        return 1
    return 0


def _print_one(out, item: InputItem, decomposer, result, r: int, args: argparse.Namespace) -> None:
    codes = result.codes
    l0 = int(codes.l0[r])
    top = decomposer.top_concepts(codes.row(r), args.top if args.top > 0 else l0)
    cosine = float(codes.fidelity[r])
    if args.json:
        record = {
            "input": item.label,
            "kind": item.kind,
            "ok": True,
            "concepts": [{"concept": name, "weight": round(w, 6)} for name, w in top],
            "l0": l0,
            "cosine": round(cosine, 6),
            "l1": float(codes.l1[r]),
            "gap": float(result.gap[r]),
            "converged": bool(result.converged[r]),
            "concept_space": decomposer.concept_space,
        }
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    label = item.label if item.kind == "image" else json.dumps(item.value, ensure_ascii=False)
    out.write(f"Concept decomposition of {label}:\n")
    width = max((len(name) for name, _ in top), default=0)
    for name, weight in top:
        out.write(f"    {name:<{width}}  {weight:.4f}\n")
    if l0 > len(top):
        out.write(f"    ... {l0 - len(top)} more\n")
    out.write(f"L0 norm: {l0}\n")
    out.write(f"cosine sim: {cosine:.4f}\n")
    if not bool(result.converged[r]):
        out.write(f"(solver stopped at relative gap {float(result.gap[r]):.2e})\n")
    out.write("\n")
