"""``splice-monitor vocab build|show``: build a concept vocabulary from word frequencies, or inspect one."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("vocab", help="build or show a concept vocabulary", description=__doc__)
    actions = parser.add_subparsers(dest="vocab_action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build a vocabulary from wordfreq English frequencies")
    build.add_argument("-o", "--output", metavar="FILE", help="write here (default: print to stdout)")
    build.add_argument("--size", type=int, default=10_000, help="number of concepts (default 10000)")
    build.add_argument("--min-length", type=int, default=3, help="shortest word kept (default 3)")
    build.add_argument("--no-fold-plurals", action="store_true", help="keep regular plurals next to their singular")
    build.set_defaults(func=_run_build)

    show = actions.add_parser("show", help="print a vocabulary's size, hash and first concepts")
    show.add_argument("--vocab", metavar="FILE", help="vocabulary file (default: the built-in one)")
    show.add_argument("--template", help="show the prompts made with this template, e.g. 'a photo of {}'")
    show.add_argument("--head", type=int, default=20, metavar="N", help="concepts to list (default 20; 0 = all)")
    show.set_defaults(func=_run_show)
    return parser


def _run_build(args: argparse.Namespace) -> int:
    from monitor.errors import ConfigError
    from monitor.concepts.vocab import build_vocabulary, builtin_header

    try:
        vocab = build_vocabulary(args.size, min_length=args.min_length, fold_plurals=not args.no_fold_plurals)
    except ConfigError as exc:
        print(f"splice-monitor vocab build: {exc}", file=sys.stderr)
        return 2
    header = builtin_header(vocab)
    if args.output:
        vocab.save(args.output, header=header)
        print(f"wrote {len(vocab)} concepts to {args.output} (hash {vocab.hash})", file=sys.stderr)
    else:
        for line in header.splitlines():
            print(f"# {line}")
        for concept in vocab:
            print(concept)
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from monitor.errors import ConfigError
    from monitor.concepts.vocab import resolve_vocabulary

    try:
        vocab = resolve_vocabulary(args.vocab)
        prompts = vocab.prompts(args.template)
    except ConfigError as exc:
        print(f"splice-monitor vocab show: {exc}", file=sys.stderr)
        return 2
    print(f"source:   {vocab.source}")
    print(f"concepts: {len(vocab)}")
    print(f"hash:     {vocab.hash}")
    multi = sum(1 for c in vocab if " " in c)
    if multi:
        print(f"multi-word concepts: {multi}")
    n = len(vocab) if args.head <= 0 else min(args.head, len(vocab))
    for i in range(n):
        line = vocab[i] if args.template is None else f"{vocab[i]}\t{prompts[i]}"
        print(f"{i:6d}  {line}")
    return 0
