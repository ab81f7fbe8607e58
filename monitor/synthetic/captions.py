"""The demo's caption stream: templated captions drawn from a few scene topics, whose topic mix shifts partway.

Seeded and self-contained (no data files, no network), so ``splice-monitor demo`` and the tests see the same stream.

>>> caps = list(CaptionStream(n=4, shift_at=2, before={"street": 1.0}, after={"snow": 1.0}))
>>> [c.topic for c in caps]
['street', 'street', 'snow', 'snow']
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

__all__ = ["TOPICS", "Caption", "CaptionStream", "distinct_captions", "write_parquet"]

# Each topic: subjects, places and extras that make its captions read like scene descriptions of that topic.
TOPICS: dict[str, dict[str, list[str]]] = {
    "street": {
        "subjects": ["a red car", "a city bus", "a yellow taxi", "a cyclist", "a delivery truck", "pedestrians",
                     "a motorcycle", "a traffic light"],
        "places": ["on a busy street", "at a city intersection", "in downtown traffic", "near a crosswalk",
                   "on a wet road", "by a parking lot"],
        "extras": ["at rush hour", "under street lamps", "next to tall buildings", "in the afternoon"],
    },
    "beach": {
        "subjects": ["a surfer", "children", "a beach umbrella", "a sailboat", "seagulls", "a lifeguard tower",
                     "sunbathers", "a sand castle"],
        "places": ["on a sandy beach", "by the ocean", "near the waves", "on the seashore", "at a tropical coast",
                   "beside the sea"],
        "extras": ["in bright sunshine", "on a hot summer day", "at sunset", "with palm trees"],
    },
    "snow": {
        "subjects": ["a skier", "a snowman", "a sled", "a snowplow", "people in winter coats", "a snowboarder",
                     "pine trees", "a frozen car"],
        "places": ["on a snowy mountain", "in deep snow", "on an icy road", "in a winter forest",
                   "on a ski slope", "in a snowstorm"],
        "extras": ["covered in snow", "on a freezing morning", "during a blizzard", "with icicles"],
    },
    "kitchen": {
        "subjects": ["a chef", "a pot of soup", "fresh vegetables", "a loaf of bread", "a frying pan",
                     "a cutting board", "a coffee cup", "a bowl of pasta"],
        "places": ["in a kitchen", "on a wooden table", "on a kitchen counter", "in a restaurant",
                   "next to the stove", "in a bakery"],
        "extras": ["ready for dinner", "with steam rising", "for breakfast", "with herbs and spices"],
    },
}

TEMPLATES = (
    "a photo of {subject} {place}",
    "{subject} {place} {extra}",
    "a picture of {subject} {place} {extra}",
    "{subject} seen {place}",
    "a blurry photo of {subject} {place}",
    "a camera frame showing {subject} {place} {extra}",
)


@dataclass(frozen=True)
class Caption:
    id: str
    timestamp: float
    text: str
    topic: str
    camera: str


class CaptionStream:
    """``n`` captions, one every ``interval_s`` seconds of event time from ``start``.

    Before ``shift_at`` topics are drawn from ``before`` (weights), from then on from ``after``. The default shifts a
    street-camera feed to snowy scenes: the concepts a monitor should name are snow, winter, ski and the like.
    """

    def __init__(
        self,
        n: int = 3000,
        *,
        shift_at: int | None = None,
        before: dict[str, float] | None = None,
        after: dict[str, float] | None = None,
        seed: int = 0,
        start: float = 1_767_225_600.0,  # 2026-01-01T00:00:00Z
        interval_s: float = 1.0,
        camera: str = "camera-7",
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        self.n = int(n)
        self.shift_at = self.n // 2 if shift_at is None else int(shift_at)
        self.before = before or {"street": 0.85, "kitchen": 0.15}
        self.after = after or {"street": 0.4, "snow": 0.45, "kitchen": 0.15}
        for name, mix in (("before", self.before), ("after", self.after)):
            unknown = sorted(set(mix) - set(TOPICS))
            if unknown:
                raise ValueError(f"{name} names unknown topic(s) {unknown}; known: {sorted(TOPICS)}")
        self.seed = seed
        self.start = float(start)
        self.interval_s = float(interval_s)
        self.camera = camera

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Caption]:
        rng = random.Random(self.seed)
        for i in range(self.n):
            mix = self.before if i < self.shift_at else self.after
            topic = rng.choices(list(mix), weights=list(mix.values()))[0]
            parts = TOPICS[topic]
            text = rng.choice(TEMPLATES).format(subject=rng.choice(parts["subjects"]),
                                                place=rng.choice(parts["places"]),
                                                extra=rng.choice(parts["extras"]))
            yield Caption(id=f"caption-{i:07d}", timestamp=self.start + i * self.interval_s, text=text, topic=topic,
                          camera=self.camera)


def distinct_captions() -> list[str]:
    """Every caption a :class:`CaptionStream` can emit, sorted: a benchmark encodes each once and streams rows."""
    return sorted({t.format(subject=s, place=p, extra=e) for topic in TOPICS.values() for t in TEMPLATES
                   for s in topic["subjects"] for p in topic["places"] for e in topic["extras"]})


def write_parquet(stream: CaptionStream, path: str) -> str:
    """Write the stream as a Parquet file with columns id, ts, caption, topic, camera; returns its source URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    caps = list(stream)
    table = pa.table({
        "id": [c.id for c in caps],
        "ts": pa.array([c.timestamp for c in caps], pa.float64()),
        "caption": [c.text for c in caps],
        "topic": [c.topic for c in caps],
        "camera": [c.camera for c in caps],
    })
    pq.write_table(table, path)
    return (f"parquet://{path}?text_column=caption&timestamp_column=ts&id_column=id&stream_column=camera"
            f"&metadata=topic")
