"""One typed configuration for ``run``, ``backfill`` and ``demo``, from four layers where a later one wins:

1. the command's defaults,
2. a YAML or TOML file (``--config FILE`` or ``SPLICE_CONFIG=FILE``): top-level keys, and optionally a section named
   after the command (``run:``, ``backfill:``, ``demo:``) whose keys win over the top level for that command,
3. environment variables ``SPLICE_<KEY>`` (``SPLICE_L1=0.4``, ``SPLICE_MIN_PREVALENCE_CHANGE=0.05``),
4. flags (``--l1 0.4``).

Keys are the flag names with ``_`` for ``-``. Every value remembers which layer set it, which
``splice-monitor config show`` prints. The resolved :class:`Settings` (a frozen pydantic model that rejects unknown
keys) is turned once into the typed :class:`~workers.config.PipelineConfig` the driver and actors receive.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.concepts.images import DEFAULT_MAX_PIXELS
from monitor.errors import ConfigError

__all__ = ["Settings", "Resolved", "COMMANDS", "add_settings_arguments", "resolve", "parse_window",
           "ENV_PREFIX"]

ENV_PREFIX = "SPLICE_"
COMMANDS = ("run", "backfill", "demo")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# DriftConfig.ert and monitor.drift's DEFAULT_MAX_STREAMS; a test keeps them equal (this module stays import-light
# so that --help is instant)
_DEFAULT_ERT = 1_000_000.0
_DEFAULT_MAX_STREAMS = 64

# which commands offer a knob (R: run, B: backfill, D: demo) and the argparse group it is shown in
_RBD, _RB, _RD = ("run", "backfill", "demo"), ("run", "backfill"), ("run", "demo")


def _knob(default: Any, help: str, group: str, commands: tuple[str, ...] = _RBD, *, shown: str | None = None,
          **kw: Any):
    """A setting: its default, help, flag group, the commands that offer it, and how --help shows an unset
    default (``shown``)."""
    extra = {"group": group, "commands": list(commands), "shown": shown}
    return Field(default, description=help, json_schema_extra=extra, **kw)


class Settings(BaseModel):
    """Every knob of run/backfill/demo with its run default; see docs/pipeline.md for what each one does."""

    # numbers in a YAML/TOML file are fine for text settings (window: 500)
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    # source
    source: Optional[str] = _knob(None, "source URI: dir:///path?glob=*.jpg&follow=1 (or a plain path), "
                                  "parquet:///file.parquet?image_column=image&timestamp_column=ts, "
                                  "redis://host:6379/0?stream=frames&group=splice (see docs/pipeline.md)",
                                  "source", _RB)
    kind: Optional[Literal["image", "text"]] = _knob(None, "payload kind when the source cannot tell", "source", _RB)
    stream: Optional[str] = _knob(None, "stream name for items the source does not name", "source", _RB)
    timestamp_column: Optional[str] = _knob(None, "Parquet/Arrow column of event times (default: a timestamp-typed "
                                            "column, else timestamp/ts/event_time/time/...; 'none': processing "
                                            "time)", "source", _RB)
    stream_column: Optional[str] = _knob(None, "Parquet/Arrow column naming each item's stream (default: "
                                         "stream/camera/camera_id if present; 'none': one stream)", "source", _RB)
    # model and decomposition
    model: str = _knob("minilm", "encoder: 'minilm' (captions) or an open_clip architecture such as ViT-B-32",
                       "model and decomposition", _RB)
    pretrained: Optional[str] = _knob(None, "open_clip pretrained tag (needs a network once) or a local checkpoint "
                                      "path", "model and decomposition", _RB)
    vocab: Optional[str] = _knob(None, "vocabulary name or file of concepts (one per line)",
                                 "model and decomposition", shown="the built-in vocabulary")
    template: Optional[str] = _knob(None, "prompt template for concepts, e.g. 'a photo of {}'",
                                    "model and decomposition", _RB)
    mean: Optional[str] = _knob(None, "modality mean (.npy from `splice-monitor calibrate`, or 'vocab') used to "
                                "center embeddings", "model and decomposition",
                                shown="captions: the vocabulary's text mean (warns); images: SpLiCE's published "
                                      "mean for the model's weights when there is one (announced at start-up), "
                                      "else none (warns); demo: calibrated on the reference captions")
    l1: float = _knob(0.25, "l1 penalty of the decomposition", "model and decomposition", ge=0)
    target_l0: Optional[float] = _knob(None, "pick the penalty to reach this many concepts",
                                       "model and decomposition", _RB, gt=0)
    cache_dir: Optional[str] = _knob(None, "where dictionaries are cached", "model and decomposition",
                                     shown="~/.cache/splice-monitor")
    max_pixels: int = _knob(DEFAULT_MAX_PIXELS, "images above this many pixels are dead-lettered as decompression "
                            "bombs (the same limit as decompose)", "model and decomposition", _RB, ge=1)
    # windows and drift
    window: str = _knob("1h", "tumbling window: an image count (e.g. 1000) or event time with a unit (30s, 5m, 1h, "
                        "1d)", "windows and drift")
    window_view: int = _knob(1, "closed windows merged into the tested view", "windows and drift", ge=1)
    allowed_lateness: float = _knob(0.0, "seconds a time window waits for late events", "windows and drift", _RB,
                                    ge=0)
    reference: Literal["fixed", "trailing", "history"] = _knob(
        "fixed", "fixed: the stream's first --reference-images images; trailing: the windows before; history: the "
        "windows stored between --reference-from and --reference-to", "windows and drift", _RB)
    reference_from: Optional[str] = _knob(None, "start of the history reference period (ISO-8601, e.g. "
                                          "2026-01-01T00:00Z, or unix seconds)", "windows and drift", _RB)
    reference_to: Optional[str] = _knob(None, "end (exclusive) of the history reference period",
                                        "windows and drift", _RB)
    reference_store: Optional[str] = _knob(None, "history store holding the reference period",
                                           "windows and drift", _RB, shown="--history")
    reference_images: int = _knob(10_000, "size of the fixed reference", "windows and drift", ge=1)
    ert: float = _knob(_DEFAULT_ERT, "expected number of items between false alarms (per stream, all concepts "
                       "together)", "windows and drift", gt=1)
    min_prevalence_change: float = _knob(0.0, "a prevalence alarm also needs an absolute change of at least this "
                                         "fraction (0.05 = 5 percentage points; 0 = off)", "windows and drift",
                                         ge=0, lt=1)
    max_streams: int = _knob(_DEFAULT_MAX_STREAMS, "streams monitored at most; items of further streams are "
                             "dead-lettered as stream_limit (bounds memory and the metrics' label set)",
                             "windows and drift", _RB, ge=1)
    # Ray
    workers: int = _knob(1, "worker actors", "Ray", ge=1)
    aggregators: int = _knob(1, "aggregator actors; streams are hashed onto them by name (each serves metrics on "
                             "--metrics-port + its index and writes history for its own streams)", "Ray", ge=1)
    gpus_per_worker: Optional[float] = _knob(None, "GPUs each worker requests", "Ray", ge=0,
                                             shown="1 when the cluster has GPUs, else CPU only")
    cpus_per_worker: float = _knob(1.0, "CPUs each worker requests", "Ray", ge=0)
    batch_size: int = _knob(64, "items per batch", "Ray", ge=1)
    max_in_flight: int = _knob(0, "batches read but not yet committed (backpressure; 0 = 2 per worker)", "Ray", ge=0)
    worker_wait: float = _knob(300.0, "seconds every worker may be down (its node lost, nowhere to restart it) "
                               "before the run ends with an error", "Ray", _RB, gt=0)
    ray_address: Optional[str] = _knob(None, "Ray cluster address ('auto': the Ray already running here)", "Ray",
                                       shown="start a local Ray")
    # outputs
    metrics_port: int = _knob(9400, "serve Prometheus metrics on this port (0: a free port; -1: off)", "outputs",
                              _RD, ge=-1, lt=65536)
    metrics_host: str = _knob("127.0.0.1", "address the metrics endpoint binds (this machine only by default; in a "
                              "cluster 0.0.0.0 or the pod IP, with a NetworkPolicy deciding who may scrape)",
                              "outputs", _RD)
    history: Optional[str] = _knob(None, "history store (directory or object-store URI) for windows and alarms",
                                   "outputs")
    write_codes: bool = _knob(False, "also store every item's sparse code in history", "outputs", _RB)
    dead_letter: Optional[str] = _knob(None, "dead-letter sink: redis://host:6379/0?stream=KEY or parquet:///dir",
                                       "outputs", _RB, shown="count only")
    pushgateway: Optional[str] = _knob(None, "when a finite source ends, push what the job did to this Prometheus "
                                       "Pushgateway (http://host:9091; job splice-run or splice-backfill, grouping "
                                       "label run=--job-id): last success time, duration and counts only, never "
                                       "alarm state", "outputs", _RB)
    job_id: Optional[str] = _knob(None, "the run's name: the Pushgateway grouping label run=... and the checkpoint "
                                  "name (run: with --history, checkpointed and resumable)", "outputs", _RB,
                                  shown="derived from --source")
    checkpoint_every: float = _knob(30.0, "with --history and --job-id: seconds between checkpoints; only what a "
                                    "checkpoint holds is acknowledged at the source", "outputs", _RB, gt=0)
    # progress
    status_every: float = _knob(30.0, "seconds between one-line status reports on stderr (0: none)", "progress",
                                _RD, ge=0)
    quiet: bool = _knob(False, "print only alarms and the summary (no start-up, status or progress lines)",
                        "progress")
    log_level: Literal["debug", "info", "warning", "error"] = _knob("warning", "log level of splice-monitor's "
                                                                   "loggers (stderr)", "progress")


# what differs from the run defaults, per command
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {},
    "backfill": {"batch_size": 128},
    "demo": {"workers": 2, "l1": 0.4, "window": "250", "reference_images": 1000, "min_prevalence_change": 0.05},
}


def knobs(command: str) -> list[str]:
    """The settings ``command`` offers, in declaration order (``"all"``: every setting)."""
    return [name for name, f in Settings.model_fields.items()
            if command == "all" or command in f.json_schema_extra["commands"]]


def default(command: str, name: str) -> Any:
    return COMMAND_DEFAULTS.get(command, {}).get(name, Settings.model_fields[name].default)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_settings_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add ``--config`` and a flag for every knob of ``command`` (``"all"``: of every command, with run's
    defaults), grouped, each help ending with its default.

    Flags default to "not given" (argparse.SUPPRESS) so that :func:`resolve` can tell a flag from a default."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=f"YAML or TOML file of settings (keys: the flag names with _; also {ENV_PREFIX}CONFIG); "
                             f"precedence: flags > {ENV_PREFIX}* environment variables > file > defaults; see "
                             f"`splice-monitor config show`")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in knobs(command):
        f = Settings.model_fields[name]
        group = f.json_schema_extra["group"]
        g = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        value = default(command, name)
        shown = f.json_schema_extra["shown"] if value is None else value
        if shown is None:
            shown = "none"
        elif isinstance(shown, int) and not isinstance(shown, bool) and shown > 9999:
            shown = f"{shown:,}"
        help_text = f"{f.description} (default: {shown}; env {env_name(name)})".replace("%", "%%")
        base, choices = _base_type(f.annotation)
        if base is bool:
            g.add_argument(flag(name), dest=name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            g.add_argument(flag(name), dest=name, type=base, choices=choices, default=argparse.SUPPRESS,
                           help=help_text)


def _base_type(annotation) -> tuple[type, list | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    inner = args[0]
    if typing.get_origin(inner) is Literal:
        return str, list(typing.get_args(inner))
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation))
    return inner, None


# ---------------------------------------------------------------------------------------------------------------------
# resolution


@dataclass(frozen=True)
class Resolved:
    """The effective settings of one command and where each value came from ("default", "file PATH",
    "env SPLICE_X", "flag --x")."""

    command: str
    settings: Settings
    sources: dict[str, str]

    def rows(self) -> list[tuple[str, Any, str]]:
        return [(name, getattr(self.settings, name), self.sources[name]) for name in knobs(self.command)]

    def format(self) -> str:
        rows = [(k, "none" if v is None else str(v), s) for k, v, s in self.rows()]
        w0 = max(len(r[0]) for r in rows)
        w1 = min(60, max(len(r[1]) for r in rows))
        return "\n".join(f"{k:<{w0}}  {v:<{w1}}  {s}" for k, v, s in rows)

    def as_dict(self) -> dict[str, Any]:
        return {k: {"value": v, "source": s} for k, v, s in self.rows()}

    # -- the typed objects the pipeline runs on ---------------------------------------------------------------------

    def worker_config(self):
        from workers.core import WorkerConfig

        s = self.settings
        if self.command == "demo":
            return WorkerConfig(model="minilm", vocab=s.vocab, l1=s.l1, cache_dir=s.cache_dir, mean=s.mean)
        return WorkerConfig(model=s.model, pretrained=s.pretrained, vocab=s.vocab, template=s.template, mean=s.mean,
                            l1=s.l1, target_l0=s.target_l0, cache_dir=s.cache_dir, max_pixels=s.max_pixels)

    def monitor_config(self):
        """The library's ``MonitorConfig`` from the window and drift settings."""
        from monitor.drift.monitor import DriftConfig, MonitorConfig, ReferenceConfig, WindowConfig

        s = self.settings
        window = parse_window(s.window)
        try:
            return MonitorConfig(
                window=WindowConfig(kind=window["kind"], size=window["size"], view=s.window_view,
                                    allowed_lateness=s.allowed_lateness),
                reference=ReferenceConfig(mode=s.reference, n_images=s.reference_images),
                drift=DriftConfig(ert=s.ert, min_prevalence_change=s.min_prevalence_change),
                max_streams=s.max_streams)
        except ValueError as exc:
            raise ConfigError(f"windows and drift settings: {exc}") from None

    def history_reference(self):
        """The :class:`~workers.config.HistoryReference` of ``--reference history`` (None otherwise), checked here so
        a bad value is a clear start-up error naming the flag."""
        from monitor.history.store import parse_time
        from workers.config import HistoryReference

        s = self.settings
        given = [flag(k) for k in ("reference_from", "reference_to", "reference_store") if getattr(s, k) is not None]
        if s.reference != "history":
            if given:
                raise ConfigError(f"{given[0]} needs --reference history (got --reference {s.reference})")
            return None
        if s.reference_from is None or s.reference_to is None:
            raise ConfigError("--reference history needs --reference-from and --reference-to (ISO-8601 or unix "
                              "seconds)")
        store = s.reference_store or s.history
        if not store:
            raise ConfigError("--reference history needs a history store: pass --reference-store DIR (or --history "
                              "DIR)")
        bounds = []
        for name in ("reference_from", "reference_to"):
            try:
                bounds.append(parse_time(getattr(s, name), name=flag(name)))
            except ValueError as exc:
                raise ConfigError(f"{flag(name)}: {exc}") from None
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"--reference-from must be before --reference-to, got {s.reference_from!r} and "
                              f"{s.reference_to!r}")
        return HistoryReference(store=str(store), start=bounds[0], end=bounds[1])

    def pipeline_config(self, **fixed):
        """The run's :class:`~workers.config.PipelineConfig`; ``fixed`` sets what the command decides itself (the
        source of the demo, backfill's checkpoint job, the Pushgateway job name, ...)."""
        from workers.config import PipelineConfig

        s = self.settings
        values = dict(
            source=s.source, worker=self.worker_config(), monitor=self.monitor_config(), workers=s.workers,
            aggregators=s.aggregators,
            gpus_per_worker=s.gpus_per_worker, cpus_per_worker=s.cpus_per_worker, batch_size=s.batch_size,
            max_in_flight=s.max_in_flight, history=s.history, ray_address=s.ray_address)
        if self.command in ("run", "backfill"):
            values.update(worker_wait_s=s.worker_wait, write_codes=s.write_codes, dead_letter=s.dead_letter,
                          kind=s.kind, stream=s.stream,
                          reference_history=self.history_reference(), pushgateway=s.pushgateway)
        if self.command in ("run", "demo"):
            values.update(metrics_port=None if s.metrics_port < 0 else s.metrics_port, metrics_host=s.metrics_host)
        if self.command in ("run", "backfill") and values.get("source"):
            values["source"] = _with_source_options(values["source"], timestamp_column=s.timestamp_column,
                                                    stream_column=s.stream_column)
        values.update(fixed)
        if not values.get("source"):
            raise ConfigError(f"{self.command} needs a source: --source URI, 'source:' in the --config file, or "
                              f"{env_name('source')}")
        return PipelineConfig(**values)


def _with_source_options(source: str, **options: str | None) -> str:
    """``source`` with the given query options added (the URI's own value wins where both say); a source kind that
    has no such option refuses it by name when it is opened."""
    extra = {k: v for k, v in options.items() if v}
    if not extra:
        return source
    from urllib.parse import parse_qs, urlencode

    base, _, query = source.partition("?")
    have = parse_qs(query, keep_blank_values=True)
    extra = {k: v for k, v in extra.items() if k not in have}
    if not extra:
        return source
    return f"{base}?{query + '&' if query else ''}{urlencode(extra)}"


def resolve(command: str, args: argparse.Namespace | None = None, *, environ: dict[str, str] | None = None
            ) -> Resolved:
    """The effective settings of ``command``: defaults < file < environment < flags (``args`` parsed by a parser
    built with :func:`add_settings_arguments`)."""
    if command not in COMMANDS:
        raise ConfigError(f"settings exist for {', '.join(COMMANDS)}, got {command!r}")
    environ = os.environ if environ is None else environ
    given = dict(vars(args)) if args is not None else {}
    names = knobs(command)
    foreign = [flag(k) for k in given if k in Settings.model_fields and k not in names]
    if foreign:
        raise ConfigError(f"{foreign[0]} is not a setting of {command}")
    values: dict[str, Any] = {n: default(command, n) for n in names}
    sources = {n: "default" if n not in COMMAND_DEFAULTS[command] else f"default ({command})" for n in names}

    config_file = given.get("config") or environ.get(env_name("config"))
    if config_file:
        for name, (value, where) in _read_file(config_file, command).items():
            values[name], sources[name] = value, where
    for name in names:
        var = env_name(name)
        if var in environ:
            values[name], sources[name] = environ[var], f"env {var}"
    for name in names:
        if name in given:
            values[name], sources[name] = given[name], f"flag {flag(name)}"
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(_problem(name, values.get(name), sources.get(name, "?"), err))
        raise ConfigError("; ".join(problems)) from None
    return Resolved(command, settings, sources)


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def _problem(name: str, value: Any, source: str, err: dict) -> str:
    """One validation error as a line naming the flag, the value, where it came from and what is allowed."""
    where = "" if source.startswith("flag") else f" (from {source})"
    bound = _BOUNDS.get(err["type"])
    if bound is not None:
        op, key = bound
        limit = err["ctx"][key]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{flag(name)} must be {op} {limit}, got {value!r}{where}"
    return f"{flag(name)} = {value!r}{where}: {err['msg']}"


def _read_file(path: str, command: str) -> dict[str, tuple[Any, str]]:
    """name -> (value, source) from a YAML/TOML settings file; its section named ``command`` wins over the top
    level. Unknown keys are an error (with close matches); keys of other commands are ignored."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--config: no such file {str(p)!r}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            raise ConfigError(f"--config {str(p)!r}: expected a .yaml, .yml or .toml file")
    except ConfigError:
        raise
    except Exception as exc:  # a syntax error of either parser
        raise ConfigError(f"--config {str(p)!r} cannot be parsed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {str(p)!r}: expected a mapping of settings, got {type(data).__name__}")
    mine = set(knobs(command))
    out: dict[str, tuple[Any, str]] = {}
    sections = {k: v for k, v in data.items() if k in COMMANDS}
    layers = [({k: v for k, v in data.items() if k not in COMMANDS}, f"file {p}")]
    section = sections.get(command)
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigError(f"--config {str(p)!r}: section {command!r} must be a mapping")
        layers.append((section, f"file {p} [{command}]"))
    for layer, where in layers:
        for key, value in layer.items():
            name = str(key).replace("-", "_")
            if name not in Settings.model_fields:
                close = difflib.get_close_matches(name, list(Settings.model_fields), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"--config {str(p)!r}: unknown setting {key!r}{hint} (settings: the flag names of "
                                  f"run/backfill/demo with _ for -, e.g. min_prevalence_change)")
            if name in mine:
                out[name] = (value, where)
    return out


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
