"""The Parquet history of monitored streams and the questions asked of it.

>>> from monitor.history import HistoryStore, Selection, compare, trend, cooccur, parse_time
"""

from monitor.history.analysis import (
    GRANULARITIES, Aggregate, Comparison, Cooccurrence, Trend, aggregate, bucket_of, compare, cooccur, trend,
)
from monitor.history.fs import URI_SCHEMES, StoreFS
from monitor.history.schema import SCHEMA_VERSION, parse_time, stream_key
from monitor.history.selection import Selection
from monitor.history.significance import benjamini_hochberg
from monitor.history.store import HistoryStore, WindowData

__all__ = [
    "GRANULARITIES", "SCHEMA_VERSION", "URI_SCHEMES", "Aggregate", "Comparison", "Cooccurrence", "HistoryStore",
    "Selection", "StoreFS", "Trend", "WindowData", "aggregate", "benjamini_hochberg", "bucket_of", "compare",
    "cooccur", "parse_time", "stream_key", "trend",
]
