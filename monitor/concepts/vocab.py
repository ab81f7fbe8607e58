"""Concept vocabularies by name or file: SpLiCE's published word lists (``laion``, ``laion-bigrams``, ``mscoco``), the
built-in English word list (``builtin``, built from wordfreq frequencies by :func:`build_vocabulary`), custom
vocabulary files; prompt templates and a stable vocabulary hash."""

from __future__ import annotations

from monitor.errors import DuplicateConceptWarning  # noqa: F401  (re-exported for callers of this module)
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from monitor.errors import ConfigError

__all__ = [
    "Vocabulary",
    "build_vocabulary",
    "load_vocabulary",
    "default_vocabulary",
    "resolve_vocabulary",
    "check_template",
    "named_vocabulary",
    "vocabulary_names",
    "DEFAULT_VOCAB",
    "DEFAULT_VOCAB_FILE",
    "DuplicateConceptWarning",
]

DEFAULT_VOCAB_FILE = "vocab_en_10k.txt"
BUILTIN = "builtin"
# The vocabulary used when none is named (docs/concepts.md, "Which vocabulary" records why this one).
DEFAULT_VOCAB = BUILTIN


@dataclass(frozen=True)
class Vocabulary:
    """An ordered, duplicate-free tuple of concept strings; row i of a dictionary is ``concepts[i]``.

    >>> v = Vocabulary(("cat", "sofa", "ice cream"))
    >>> len(v), v.index("sofa"), v.prompts("a photo of {}")[2]
    (3, 1, 'a photo of ice cream')
    """

    concepts: tuple[str, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ConfigError(f"vocabulary from {self.source} is empty: it needs at least one concept")
        dups = [c for c, n in Counter(self.concepts).items() if n > 1]
        if dups:
            raise ConfigError(f"vocabulary from {self.source} has duplicate concepts: {dups[:20]}")

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.concepts)

    def __getitem__(self, i: int) -> str:
        return self.concepts[i]

    @property
    def hash(self) -> str:
        """sha256 (first 16 hex digits) of the concepts in order; changes when any concept or the order changes."""
        return _vocab_hash(self.concepts)

    def index(self, concept: str) -> int:
        try:
            return self._positions()[concept]
        except KeyError:
            raise KeyError(concept) from None

    def _positions(self) -> dict[str, int]:
        cached = self.__dict__.get("_pos")
        if cached is None:
            cached = {c: i for i, c in enumerate(self.concepts)}
            object.__setattr__(self, "_pos", cached)
        return cached

    def __contains__(self, concept: object) -> bool:
        return concept in self._positions()

    def prompts(self, template: str | None = None) -> list[str]:
        """The strings actually encoded: each concept put through ``template`` (e.g. "a photo of {}")."""
        if template is None:
            return list(self.concepts)
        check_template(template)
        return [template.replace("{}", c) for c in self.concepts]

    def save(self, path: str | Path, *, header: str | None = None) -> Path:
        """Write one concept per line (UTF-8), with optional '#' header lines."""
        path = Path(path)
        lines = [f"# {line}".rstrip() for line in (header or "").splitlines()]
        path.write_text("\n".join(lines + list(self.concepts)) + "\n", encoding="utf-8")
        return path


def _vocab_hash(concepts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for c in concepts:
        h.update(c.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_template(template: str | None) -> str | None:
    """A template must contain exactly one ``{}`` where the concept goes; None means the bare concept."""
    if template is None:
        return None
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ConfigError(
            f"template must be a string with exactly one '{{}}' placeholder (e.g. 'a photo of {{}}'), got {template!r}"
        )
    return template


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")


def parse_vocabulary(text: str, *, source: str = "<text>") -> Vocabulary:
    """Parse vocabulary text: one concept per line, '#' starts a comment line, blank lines ignored, inner whitespace
    collapsed to one space. Duplicates are dropped (first occurrence kept) with a :class:`DuplicateConceptWarning`
    that lists them."""
    concepts: list[str] = []
    seen: set[str] = set()
    dups: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        concept = _SPACES.sub(" ", line)
        if concept in seen:
            dups.append(concept)
            continue
        seen.add(concept)
        concepts.append(concept)
    if dups:
        shown = ", ".join(repr(d) for d in dups[:20]) + (f" and {len(dups) - 20} more" if len(dups) > 20 else "")
        warnings.warn(
            f"vocabulary {source}: {len(dups)} duplicate concept line(s) dropped: {shown} (the first of each is "
            "kept); delete the repeated lines to silence this",
            DuplicateConceptWarning,
            stacklevel=3,
        )
    if not concepts:
        raise ConfigError(f"vocabulary {source} has no concepts (only blank or '#' comment lines)")
    return Vocabulary(tuple(concepts), source=source)


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Load a custom vocabulary file (UTF-8, one concept per line, multi-word concepts allowed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"vocab: file {str(path)!r} does not exist (expected a UTF-8 text file, one concept per line)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"vocab: cannot read {str(path)!r}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 4]
        raise ConfigError(f"vocab: {str(path)!r} is not UTF-8 (byte {exc.start}: {bad!r})") from None
    return parse_vocabulary(text, source=str(path))


def builtin_vocabulary(size: int | None = None) -> Vocabulary:
    """The built-in 10,000-word English vocabulary shipped in ``monitor/concepts/data``; it runs from the most to
    the least frequent word, so ``size`` keeps the first ``size`` words."""
    text = resources.files("monitor.concepts").joinpath("data", DEFAULT_VOCAB_FILE).read_text(encoding="utf-8")
    vocab = parse_vocabulary(text, source=f"{BUILTIN} ({DEFAULT_VOCAB_FILE})")
    if size is None:
        return vocab
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(vocab):
        raise ConfigError(f"vocab size for {BUILTIN!r} must be an integer in [1, {len(vocab)}], got {size!r}")
    return Vocabulary(vocab.concepts[:size], source=f"{BUILTIN} (first {size} words of {DEFAULT_VOCAB_FILE})")


def vocabulary_names() -> list[str]:
    """Names accepted wherever a vocabulary is asked for (``--vocab NAME``), besides file paths."""
    from monitor.concepts.published import PUBLISHED_VOCABULARIES

    return [*PUBLISHED_VOCABULARIES, BUILTIN]


def named_vocabulary(name: str, size: int | None = None) -> Vocabulary:
    """A vocabulary by name: ``laion``, ``laion-bigrams`` and ``mscoco`` are SpLiCE's published lists (the last
    ``size`` lines of the file, as the reference reads them); ``builtin`` is this project's English word list.
    ``size`` None means each list's own default (10,000; 15,000 for laion-bigrams, i.e. words plus bigrams)."""
    from monitor.concepts.published import PUBLISHED_VOCABULARIES, published_vocabulary_lines

    if name == BUILTIN:
        return builtin_vocabulary(size)
    if name not in PUBLISHED_VOCABULARIES:
        raise ConfigError(f"vocab: unknown vocabulary name {name!r}; known: {', '.join(vocabulary_names())}")
    concepts, taken = published_vocabulary_lines(name, size)
    spec = PUBLISHED_VOCABULARIES[name]
    # straight to Vocabulary: the reference keeps lines such as '#' as concepts, which the file parser would skip
    return Vocabulary(tuple(concepts), source=f"{name} (last {taken} lines of SpLiCE's {spec.file})")


def default_vocabulary() -> Vocabulary:
    """The vocabulary used when none is named (:data:`DEFAULT_VOCAB`)."""
    return named_vocabulary(DEFAULT_VOCAB)


_NAME_SIZE = re.compile(r"^(?P<name>[a-z][a-z-]*)(?::(?P<size>\d+))?$")


def parse_vocab_spec(spec: str) -> tuple[str, int | None] | None:
    """``"laion"`` -> ("laion", None), ``"laion:5000"`` -> ("laion", 5000); None when ``spec`` names no known
    vocabulary (it is then a file path).

    >>> parse_vocab_spec("laion:5000"), parse_vocab_spec("my-words.txt")
    (('laion', 5000), None)
    """
    m = _NAME_SIZE.match(spec)
    if m is None or m["name"] not in vocabulary_names():
        return None
    return m["name"], None if m["size"] is None else int(m["size"])


def resolve_vocabulary(vocab: Vocabulary | str | Path | Iterable[str] | None, *, size: int | None = None) -> Vocabulary:
    """None -> the default vocabulary; a name (``laion``, ``laion:5000``, ``builtin``, see :func:`named_vocabulary`)
    -> that vocabulary; a Vocabulary as is; another string or a path -> :func:`load_vocabulary`; a list of strings
    -> in memory. ``size`` applies to named vocabularies only (a ``NAME:SIZE`` spec carries its own).

    A known name wins over a file of the same name in the working directory; write ``./laion`` for the file.
    """
    if vocab is None:
        vocab = DEFAULT_VOCAB
    if isinstance(vocab, str):
        named = parse_vocab_spec(vocab)
        if named is not None:
            name, spec_size = named
            if size is not None and spec_size is not None and size != spec_size:
                raise ConfigError(f"vocab {vocab!r} names size {spec_size} but a size of {size} was also given")
            return named_vocabulary(name, size if size is not None else spec_size)
    if size is not None:
        raise ConfigError(
            f"a vocabulary size applies to the named vocabularies ({', '.join(vocabulary_names())}); "
            f"{vocab if isinstance(vocab, (str, Path)) else 'this vocabulary'} is used whole"
        )
    if isinstance(vocab, Vocabulary):
        return vocab
    if isinstance(vocab, (str, Path)):
        return load_vocabulary(vocab)
    items = [_SPACES.sub(" ", str(c).strip()) for c in vocab]
    return parse_vocabulary("\n".join(items), source="<list>")


# --------------------------------------------------------------------------------------------------------------------
# Building the built-in vocabulary
# --------------------------------------------------------------------------------------------------------------------

# Function words and other tokens that carry no visual or topical concept. Hand-written for this project: pronouns,
# determiners, prepositions, conjunctions, auxiliaries and modal verbs, common adverbs and discourse fillers.
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those there here such same other another each every either neither both all any some
    none no nor not only own few more most much many several enough less least lot lots
    i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves one ones oneself someone somebody something anyone anybody
    anything everyone everybody everything nobody nothing whoever whatever whichever whom whose who what which
    when where why how whether while whereas whereby wherein thereby therein thereof hereby
    and or but if so because since unless until though although than then thus hence therefore however moreover
    furthermore nevertheless nonetheless otherwise meanwhile instead besides also too either else
    of in on at by for with without within into onto upon from to toward towards through throughout across along
    around about above below under underneath beneath over between among amongst against beside besides beyond
    during before after behind ahead near nearby off out up down inside outside via per versus amid despite unlike
    like till
    be am is are was were been being do does did doing done have has had having get gets got gotten getting
    can could shall should will would may might must ought need needs
    just very really quite rather pretty fairly almost already always never ever often sometimes usually seldom
    rarely still yet even soon later now again once twice ago away anyway anyhow somehow somewhat maybe perhaps
    probably possibly certainly definitely actually basically literally seriously simply merely mostly mainly
    especially particularly exactly nearly hardly barely indeed truly totally completely entirely fully
    etc ie eg vs via
    yes yeah yep nope okay ok oh ah uh um hmm hey hi hello bye lol lmao omg wow huh haha hahaha
    gonna wanna gotta kinda sorta dunno ya yo
    mr mrs ms dr jr sr st
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
    eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds thousand thousands
    million millions billion billions trillion first second third fourth fifth sixth seventh eighth ninth tenth
    said says say saying tell told ask asked thing things stuff way ways
    """.split()
)

# Tokens of the web and of markup rather than of the world.
JUNK: frozenset[str] = frozenset(
    """
    www http https com org net html htm php asp xml pdf jpg jpeg png gif url urls href src img div span nbsp amp
    quot utc gmt edt est pst cdt cst pm am non pre anti re
    """.split()
)

# Profanity and slurs have no place in a concept list shown on operations dashboards.
BLOCKED: frozenset[str] = frozenset(
    """
    fuck fucking fucked fucker fuckers fucks shit shitty shits bullshit bitch bitches bitchy ass asses asshole
    assholes dick dicks cock cocks pussy pussies cunt cunts twat whore whores slut sluts bastard bastards damn
    goddamn crap piss pissed nigga niggas nigger niggers fag fags faggot faggots retard retarded retards dyke
    tranny motherfucker motherfuckers wank wanker jizz cum porn porno horny
    """.split()
)

# Plurals that name a different thing than their singular; never folded into it.
_KEEP_PLURAL: frozenset[str] = frozenset(
    """
    glasses pants jeans shorts trousers clothes goods arms news series species means physics mathematics politics
    economics athletics gymnastics olympics sunglasses scissors stairs headquarters customs manners savings
    earnings belongings surroundings outskirts remains sales times works letters arts sports graphics lyrics ethics
    electronics logistics statistics tights leggings overalls binoculars pyjamas pajamas slippers boots shoes socks
    """.split()
)

_ROMAN = re.compile(r"^(?=[ivxlcdm]+$)m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$")
_WORD = re.compile(r"^[a-z]+(?:-[a-z]+)?$")


def _plural_base(word: str, kept: set[str]) -> str | None:
    """The singular already in ``kept`` that ``word`` is a regular plural of, if any."""
    if word in _KEEP_PLURAL or len(word) < 4 or not word.endswith("s") or word.endswith("ss"):
        return None
    candidates = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("es"):
        candidates.append(word[:-2])
    candidates.append(word[:-1])
    for base in candidates:
        if base in kept:
            return base
    return None


def build_vocabulary(
    size: int = 10_000,
    *,
    lang: str = "en",
    min_length: int = 3,
    fold_plurals: bool = True,
    extra_stopwords: Iterable[str] = (),
    search_depth: int = 60_000,
) -> Vocabulary:
    """Build a concept vocabulary of ``size`` words from wordfreq's frequency list, most frequent first.

    Kept: lowercase ASCII words (one inner hyphen allowed) of at least ``min_length`` letters. Dropped: stopwords
    and function words, numerals and Roman numerals, punctuation, contractions and possessives, web/markup tokens,
    profanity and (with ``fold_plurals``) regular plurals whose singular is more frequent and already kept
    ("cats" -> "cat"; "glasses" and other plurals that name a different thing stay).

    >>> v = build_vocabulary(200)
    >>> len(v), {"in", "and", "the", "of", "-"} & set(v)
    (200, set())
    """
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"size must be a positive integer, got {size!r}")
    if min_length < 1:
        raise ConfigError(f"min_length must be >= 1, got {min_length!r}")
    try:
        import wordfreq
    except ImportError:  # pragma: no cover - wordfreq is a declared dependency
        raise ConfigError("building a vocabulary needs the wordfreq package: pip install wordfreq") from None

    stop = STOPWORDS | JUNK | BLOCKED | {w.strip().lower() for w in extra_stopwords}
    depth = max(search_depth, 4 * size)
    kept: list[str] = []
    kept_set: set[str] = set()
    for word in wordfreq.top_n_list(lang, depth):
        if len(kept) >= size:
            break
        if len(word) < min_length or not _WORD.match(word) or word in stop or _ROMAN.match(word):
            continue
        if fold_plurals and _plural_base(word, kept_set) is not None:
            continue
        kept.append(word)
        kept_set.add(word)
    if len(kept) < size:
        raise ConfigError(
            f"size={size} is more than the {len(kept)} words left after filtering wordfreq's top {depth} "
            f"{lang!r} words; ask for a smaller size or raise search_depth"
        )
    return Vocabulary(tuple(kept), source=f"wordfreq:{lang}:{size}")


def builtin_header(vocab: Vocabulary) -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        version = dist_version("wordfreq")
    except PackageNotFoundError:  # pragma: no cover
        version = "?"
    return (
        f"splice-monitor built-in concept vocabulary: {len(vocab)} English words\n"
        f"built by monitor.concepts.vocab.build_vocabulary(size={len(vocab)}) from wordfreq {version} frequencies\n"
        "(stopwords, numerals, punctuation, contractions, web tokens, profanity and regular plurals removed)\n"
        f"concept hash: {vocab.hash}"
    )
