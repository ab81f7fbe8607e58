"""Arrow-level helpers of the history store: reading many small Parquet files at once (pruning row groups by
concept), time filters, rollups, and last-write-wins deduplication of windows and rows."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from monitor.history.fs import StoreFS
from monitor.errors import ConfigError
from monitor.history.schema import CONCEPT_SCHEMA, NO_INDEX, ROLLUP_SCHEMA, WINDOW_SCHEMA, conform
from monitor.records import WindowSummary

def range_mask(t: np.ndarray, start: float | None, end: float | None) -> pa.Array:
    mask = np.ones(len(t), dtype=bool)
    if start is not None:
        mask &= t >= start
    if end is not None:
        mask &= t < end
    return pa.array(mask)


def read_one(fs: StoreFS, path: PurePath, schema: pa.Schema, concepts: np.ndarray | None, start, end) -> pa.Table:
    with fs.open_input(path) as fh:
        return read_parquet(pq.ParquetFile(fh), schema, concepts, start, end)


def read_parquet(pf: pq.ParquetFile, schema: pa.Schema, concepts: np.ndarray | None, start, end) -> pa.Table:
    file_schema = pf.schema_arrow
    present = [n for n in schema.names if n in file_schema.names]  # version-1 files lack window_index
    if concepts is None:
        # the caller's pool already spans the files
        return conform(pf.read(columns=present, use_threads=False), schema)
    col = file_schema.get_field_index("concept_index")  # the file's column, whatever subset ``schema`` names
    md = pf.metadata
    groups = []
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            groups.append(i)
            continue
        # some wanted id lies in [min, max]
        if np.searchsorted(concepts, st.max, side="right") > np.searchsorted(concepts, st.min, side="left"):
            groups.append(i)
    table = pf.read_row_groups(groups, columns=present, use_threads=False) if groups else schema.empty_table()
    table = conform(table, schema)
    mask = np.isin(table["concept_index"].to_numpy(), concepts)
    if start is not None or end is not None:
        mask &= range_mask(table["start"].to_numpy(), start, end).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(mask))


def read_many(
    fs: StoreFS,
    files: Sequence[PurePath],
    schema: pa.Schema,
    *,
    concepts: np.ndarray | None = None,
    start: float | None = None,
    end: float | None = None,
) -> pa.Table:
    """Read many small Parquet files concurrently (per-file open cost dominates day-partitioned queries);
    with ``concepts`` (sorted ids) only the row groups whose statistics may hold them."""
    from concurrent.futures import ThreadPoolExecutor

    if not files:
        return schema.empty_table()
    if len(files) == 1:
        tables = [read_one(fs, files[0], schema, concepts, start, end)]
    else:
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1), len(files))) as pool:
            tables = list(pool.map(lambda f: read_one(fs, f, schema, concepts, start, end), files))
    return pa.concat_tables(tables)  # read_parquet conformed each one already


def rollup(concepts: pa.Table) -> pa.Table:
    """Per-concept totals of a window_concepts table."""
    ids = concepts["concept_index"].to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    sums = {
        name: np.bincount(inverse, weights=concepts[name].to_numpy(), minlength=len(uniq))
        for name in ("weight_sum", "weight_sq_sum")
    }
    presence = np.bincount(inverse, weights=concepts["presence"].to_numpy(), minlength=len(uniq))
    return pa.table(
        {"concept_index": uniq.astype(np.int32), **sums, "presence": np.rint(presence).astype(np.int64)},
        schema=ROLLUP_SCHEMA,
    )


def meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def range_filter(column: str, start: float | None, end: float | None) -> ds.Expression | None:
    expr = None
    if start is not None:
        expr = ds.field(column) >= start
    if end is not None:
        cond = ds.field(column) < end
        expr = cond if expr is None else expr & cond
    return expr


def concept_result_schema() -> pa.Schema:
    return CONCEPT_SCHEMA.append(pa.field("stream", pa.dictionary(pa.int32(), pa.string())))


def dataset(fs: StoreFS, files: Sequence[PurePath], schema: pa.Schema) -> ds.Dataset:
    """The files as one dataset with ``schema`` (columns an older file lacks read as null: see ``conform``)."""
    return ds.dataset([str(f) for f in files], schema=schema, format="parquet", filesystem=fs.fs)


def constant_dict(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()))


def window_keys(table: pa.Table) -> np.ndarray:
    """The identity of each window row: (start, window_index) as one sortable text key per row."""
    starts = table["start"].to_numpy()
    index = table["window_index"].to_numpy()
    return np.array([f"{t!r}\x00{i}" for t, i in zip(starts, index)], dtype=object)


def dedupe_windows(header: pa.Table) -> tuple[pa.Table, dict[tuple[str, str], set[str]]]:
    """Keep the last-written row per (stream, start, window_index); return, per losing (stream, batch), the window
    keys (:func:`window_keys`) whose concept rows must be dropped from that batch's file."""
    streams = header["stream"].to_numpy(zero_copy_only=False)
    wkeys = window_keys(header)
    keys = np.array([f"{s}\x00{k}" for s, k in zip(streams, wkeys)], dtype=object)
    if len(np.unique(keys)) == len(keys):
        return header, {}
    batches = header["batch"].to_numpy(zero_copy_only=False)
    order = np.lexsort((batches.astype(str), keys.astype(str)))  # by key, then batch ascending
    sorted_keys = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[:-1] != sorted_keys[1:]
    keep_rows = np.sort(order[last])
    losers: dict[tuple[str, str], set[str]] = {}
    for r in order[~last]:
        losers.setdefault((str(streams[r]), str(batches[r])), set()).add(str(wkeys[r]))
    return header.take(pa.array(keep_rows)), losers


def dedupe_last(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows unique by ``keys``, keeping the one from the greatest batch id (the last written)."""
    cols = [table[k].to_numpy(zero_copy_only=False).astype(str) for k in keys]
    batches = table["batch"].to_numpy(zero_copy_only=False).astype(str)
    order = np.lexsort((batches, *reversed(cols)))
    sk = [c[order] for c in cols]
    last = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        same = np.ones(len(order) - 1, dtype=bool)
        for c in sk:
            same &= c[:-1] == c[1:]
        last[:-1] = ~same
    if last.all():
        return table
    return table.take(pa.array(np.sort(order[last])))



def fill_defaults(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A scanned batch with the nulls a dataset puts in columns an older file lacks replaced by their defaults."""
    if "window_index" not in batch.schema.names or not batch.column("window_index").null_count:
        return batch
    i = batch.schema.get_field_index("window_index")
    filled = batch.column(i).fill_null(pa.scalar(NO_INDEX, pa.int64()))
    return pa.RecordBatch.from_arrays([filled if j == i else c for j, c in enumerate(batch.columns)],
                                      schema=batch.schema)


def check_window(w: WindowSummary, concept_space: str, n_concepts: int, location: str) -> None:
    """Refuse a window of another concept space or width, with impossible bounds or without a stream."""
    if w.concept_space and w.concept_space != concept_space:
        raise ConfigError(
            f"window of stream {w.stream!r} at {w.start} is in concept space {w.concept_space!r} but history "
            f"store {location!r} holds {concept_space!r}; concept spaces never mix"
        )
    for name in ("weight_sum", "weight_sq_sum", "presence"):
        arr = np.asarray(getattr(w, name))
        if arr.shape != (n_concepts,):
            raise ConfigError(
                f"window of stream {w.stream!r} at {w.start}: {name} has shape {arr.shape}, the store's concept "
                f"space {concept_space!r} has {n_concepts} concepts"
            )
    if not (math.isfinite(w.start) and math.isfinite(w.end)) or w.end < w.start:
        raise ValueError(f"window of stream {w.stream!r}: need finite start <= end, got [{w.start}, {w.end})")
    if w.n_images < 0:
        raise ValueError(f"window of stream {w.stream!r} at {w.start}: n_images={w.n_images} must be >= 0")
    if not isinstance(w.stream, str) or not w.stream:
        raise ValueError(f"window stream must be a non-empty string, got {w.stream!r}")


def window_tables(group: list[WindowSummary], batch: str) -> tuple[pa.Table, pa.Table]:
    """(header, concept rows) of one batch of windows: one header row per window, one concept row per (window,
    concept active in it)."""
    starts, cols, wsum, wsq, pres, index = [], [], [], [], [], []
    n_active = []
    for w in group:
        presence = np.asarray(w.presence, dtype=np.int64)
        weight_sum = np.asarray(w.weight_sum, dtype=np.float64)
        weight_sq = np.asarray(w.weight_sq_sum, dtype=np.float64)
        active = np.flatnonzero((presence != 0) | (weight_sum != 0) | (weight_sq != 0))
        n_active.append(len(active))
        starts.append(np.full(len(active), w.start, dtype=np.float64))
        index.append(np.full(len(active), int(w.index), dtype=np.int64))
        cols.append(active.astype(np.int32))
        wsum.append(weight_sum[active])
        wsq.append(weight_sq[active])
        pres.append(presence[active])
    start = np.concatenate(starts) if starts else np.zeros(0)
    concept = np.concatenate(cols) if cols else np.zeros(0, np.int32)
    window = np.concatenate(index) if index else np.zeros(0, np.int64)
    # Sorted by concept then time: row-group statistics then let a trend skip all other concepts.
    order = np.lexsort((window, start, concept))
    concepts = pa.table(
        {
            "start": start[order],
            "concept_index": concept[order],
            "weight_sum": np.concatenate(wsum)[order],
            "weight_sq_sum": np.concatenate(wsq)[order],
            "presence": np.concatenate(pres)[order],
            "window_index": window[order],
        },
        schema=CONCEPT_SCHEMA,
    )
    header = pa.table(
        {
            "stream": [w.stream for w in group],
            "start": [float(w.start) for w in group],
            "end": [float(w.end) for w in group],
            "n_images": [int(w.n_images) for w in group],
            "n_active": n_active,
            "fidelity_sum": [float(w.fidelity_sum) for w in group],
            "fidelity_sq_sum": [float(w.fidelity_sq_sum) for w in group],
            "fidelity_min": [float(w.fidelity_min) for w in group],
            "fidelity_max": [float(w.fidelity_max) for w in group],
            "l0_sum": [float(w.l0_sum) for w in group],
            "l0_sq_sum": [float(w.l0_sq_sum) for w in group],
            "batch": [batch] * len(group),
            "window_index": [int(w.index) for w in group],
        },
        schema=WINDOW_SCHEMA,
    )
    return header.sort_by([("start", "ascending"), ("window_index", "ascending")]), concepts
