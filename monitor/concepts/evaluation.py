"""How well a vocabulary names known topics: decompose captions whose topic is known (the demo's caption generator)
and count how often the top concepts are words of that topic. docs/concepts.md ("Which vocabulary") records the
comparison that chose the default vocabulary; ``python -m monitor.concepts.evaluation`` repeats it."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["TOPIC_WORDS", "TopicScore", "topic_scores", "main"]

# Words a reader would accept as naming each topic of monitor.synthetic.captions: the content words of its
# subjects, places and extras, their singular/plural and closely related words. Written before any measurement,
# the same for every vocabulary; a vocabulary gets no credit for a word it lacks.
TOPIC_WORDS: dict[str, frozenset[str]] = {
    "street": frozenset(
        """street streets car cars bus buses taxi taxis cab cyclist cyclists bicycle bike cycling truck trucks
        delivery pedestrian pedestrians motorcycle motorcycles motorbike traffic intersection city downtown urban
        crosswalk road roads parking lot lamp lamps streetlight building buildings tall rush hour afternoon vehicle
        vehicles sidewalk highway wet""".split()
    ),
    "beach": frozenset(
        """beach beaches surfer surfers surf surfing children kids umbrella sailboat sailing sail boat seagull
        seagulls gull gulls lifeguard sunbather sunbathers sunbathing sand sandy castle ocean waves wave seashore
        shore coast coastal tropical sea seaside sunshine sunny summer hot sunset palm palms""".split()
    ),
    "snow": frozenset(
        """snow snowy skier skiers ski skiing snowman sled sledding snowplow plow winter coat coats snowboarder
        snowboard snowboarding pine pines frozen freezing frost mountain mountains icy ice slope slopes
        snowstorm storm blizzard icicle icicles cold forest""".split()
    ),
    "kitchen": frozenset(
        """kitchen chef chefs cook cooking pot soup vegetables vegetable veggies bread loaf frying fry pan cutting
        board coffee cup mug bowl pasta wooden table counter restaurant stove bakery baking dinner steam breakfast
        herbs herb spices spice food meal""".split()
    ),
}


@dataclass(frozen=True)
class TopicScore:
    """Hit rates of one vocabulary over captions of known topics."""

    vocabulary: str
    n_concepts: int
    n_captions: int
    top1_hit: float  # share of captions whose largest concept is a word of their topic
    top3_hit: float  # share whose three largest include one
    top5_precision: float  # share of the five largest concepts (all captions pooled) that are words of the topic
    top5_other_topic: float  # share of them that are words of another topic only (naming the wrong scene)
    mean_l0: float
    mean_cosine: float
    per_topic_top3: dict[str, float]
    top_concepts: dict[str, list[str]]  # per topic: the most frequent top-3 concepts


def topic_scores(encoder, decomposer, captions: Sequence[tuple[str, str]], *, vocabulary: str) -> TopicScore:
    """Score ``decomposer`` on (topic, caption) pairs."""
    import numpy as np

    texts = [c for _, c in captions]
    topics = [t for t, _ in captions]
    result = decomposer.decompose(encoder.encode_texts(texts), warn=False)
    if result.rejected:
        raise ValueError(f"captions rejected by the decomposer: {result.rejected[:3]}")
    top1 = top3 = prec = other = total5 = 0
    per_topic: Counter[str] = Counter()
    per_topic_n: Counter[str] = Counter()
    named: dict[str, Counter[str]] = {t: Counter() for t in TOPIC_WORDS}
    for row, topic in enumerate(topics):
        names = [n.lower() for n, _ in decomposer.top_concepts(result.codes.row(row), 5)]
        own = TOPIC_WORDS[topic]
        rest = frozenset().union(*(w for t, w in TOPIC_WORDS.items() if t != topic)) - own
        top1 += bool(names) and names[0] in own
        hit3 = any(n in own for n in names[:3])
        top3 += hit3
        per_topic[topic] += hit3
        per_topic_n[topic] += 1
        prec += sum(n in own for n in names)
        other += sum(n in rest for n in names)
        total5 += len(names)
        named[topic].update(names[:3])
    n = len(topics)
    return TopicScore(
        vocabulary=vocabulary,
        n_concepts=decomposer.n_concepts,
        n_captions=n,
        top1_hit=top1 / n,
        top3_hit=top3 / n,
        top5_precision=prec / max(total5, 1),
        top5_other_topic=other / max(total5, 1),
        mean_l0=float(np.mean(result.codes.l0)),
        mean_cosine=float(np.mean(result.codes.fidelity)),
        per_topic_top3={t: per_topic[t] / per_topic_n[t] for t in per_topic_n},
        top_concepts={t: [w for w, _ in c.most_common(8)] for t, c in named.items() if c},
    )


def topic_captions(n: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` captions of the demo generator, its four topics in equal shares."""
    from monitor.synthetic.captions import TOPICS, CaptionStream

    mix = {t: 1.0 for t in TOPICS}
    return [(c.topic, c.text) for c in CaptionStream(n=n, shift_at=0, before=mix, after=mix, seed=seed)]


def main(argv: list[str] | None = None) -> int:
    """Compare vocabularies on MiniLM captions; prints one JSON object per vocabulary."""
    import argparse

    from monitor.concepts.decomposer import create_decomposer

    p = argparse.ArgumentParser(prog="python -m monitor.concepts.evaluation", description=main.__doc__)
    p.add_argument("--vocab", action="append", help="vocabulary names or files (default: builtin, laion, mscoco)")
    p.add_argument("--captions", type=int, default=400)
    p.add_argument("--l1", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    captions = topic_captions(args.captions, seed=args.seed)
    for vocab in args.vocab or ["builtin", "laion", "mscoco"]:
        encoder, dec = create_decomposer("minilm", vocab=vocab, mean="vocab", l1=args.l1, device="cpu",
                                         cache_dir=args.cache_dir)
        score = topic_scores(encoder, dec, captions, vocabulary=vocab)
        print(json.dumps({**asdict(score), "l1": args.l1}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
