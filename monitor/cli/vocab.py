"""``splice-monitor vocab list|show|build``: the vocabularies on offer, a look inside one, or a new one built from
word frequencies."""

from __future__ import annotations

import argparse
import json
import sys

from monitor.cli.decompose import add_vocab_arguments


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("vocab", help="list, show or build concept vocabularies", description=__doc__)
    actions = parser.add_subparsers(dest="vocab_action", metavar="ACTION", required=True)

    lst = actions.add_parser("list", help="the named vocabularies: SpLiCE's own and the built-in one")
    lst.add_argument("--json", action="store_true", help="print one JSON object")
    lst.set_defaults(func=_run_list)

    show = actions.add_parser("show", help="print a vocabulary's size, hash and first concepts")
    add_vocab_arguments(show)
    show.add_argument("--template", help="show the prompts made with this template, e.g. 'a photo of {}'")
    show.add_argument("--head", type=int, default=20, metavar="N", help="concepts to list (default 20; 0 = all)")
    show.add_argument("--json", action="store_true", help="print one JSON object (source, size, hash, concepts)")
    show.set_defaults(func=_run_show)

    build = actions.add_parser("build", help="build a vocabulary from wordfreq English frequencies")
    build.add_argument("-o", "--output", metavar="FILE", help="write here (default: print to stdout)")
    build.add_argument("--size", type=int, default=10_000, help="number of concepts (default 10000)")
    build.add_argument("--min-length", type=int, default=3, help="shortest word kept (default 3)")
    build.add_argument("--no-fold-plurals", action="store_true", help="keep regular plurals next to their singular")
    build.add_argument("--json", action="store_true",
                       help="print one JSON object (size, hash, and the concepts unless -o is given)")
    build.set_defaults(func=_run_build)
    return parser


def _emit_json(doc: dict) -> None:
    json.dump(doc, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def _run_list(args: argparse.Namespace) -> int:
    from monitor.concepts.published import PUBLISHED_VOCABULARIES
    from monitor.concepts.vocab import BUILTIN, DEFAULT_VOCAB

    rows = [
        {"name": v.name, "default_size": v.default_size, "file": v.file, "description": v.description,
         "default": v.name == DEFAULT_VOCAB}
        for v in PUBLISHED_VOCABULARIES.values()
    ]
    rows.append({"name": BUILTIN, "default_size": 10_000, "file": "vocab_en_10k.txt",
                 "description": "this project's 10,000 frequent English words without stopwords (wordfreq)",
                 "default": BUILTIN == DEFAULT_VOCAB})
    if args.json:
        _emit_json({"default": DEFAULT_VOCAB, "vocabularies": rows})
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['name']:<{width}}  {r['default_size']:>6,}  {r['description']}{mark}")
    print("use one with --vocab NAME (and --vocab-size N), or give a file with one concept per line")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from monitor.concepts.vocab import resolve_vocabulary

    vocab = resolve_vocabulary(args.vocab, size=args.vocab_size)
    prompts = vocab.prompts(args.template)
    n = len(vocab) if args.head <= 0 else min(args.head, len(vocab))
    multi = sum(1 for c in vocab if " " in c)
    if args.json:
        doc = {"source": vocab.source, "concepts": len(vocab), "hash": vocab.hash, "multi_word": multi,
               "template": args.template, "head": list(vocab.concepts[:n])}
        if args.template is not None:
            doc["prompts"] = prompts[:n]
        _emit_json(doc)
        return 0
    print(f"source:   {vocab.source}")
    print(f"concepts: {len(vocab)}")
    print(f"hash:     {vocab.hash}")
    if multi:
        print(f"multi-word concepts: {multi}")
    for i in range(n):
        line = vocab[i] if args.template is None else f"{vocab[i]}\t{prompts[i]}"
        print(f"{i:6d}  {line}")
    return 0


def _run_build(args: argparse.Namespace) -> int:
    from monitor.concepts.vocab import build_vocabulary, builtin_header

    vocab = build_vocabulary(args.size, min_length=args.min_length, fold_plurals=not args.no_fold_plurals)
    header = builtin_header(vocab)
    if args.output:
        vocab.save(args.output, header=header)
    if args.json:
        doc = {"source": vocab.source, "concepts": len(vocab), "hash": vocab.hash, "output": args.output}
        if not args.output:
            doc["vocabulary"] = list(vocab.concepts)
        _emit_json(doc)
    elif args.output:
        print(f"wrote {len(vocab)} concepts to {args.output} (hash {vocab.hash})", file=sys.stderr)
    else:
        for line in header.splitlines():
            print(f"# {line}")
        for concept in vocab:
            print(concept)
    return 0
