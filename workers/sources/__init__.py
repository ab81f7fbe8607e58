"""Stream sources for the pipeline: a directory of images (optionally followed), Parquet/Arrow files, Redis Streams.

Every source hands out numbered batches, as descriptors a worker resolves itself (file row ranges, claimed Redis
entry ids or a worker's own claim, file names: the driver never carries payloads), and is told ``ack(batch)``
only after the batch's contribution is committed by the aggregator, so an item is never lost: what is not
acknowledged is delivered again (Redis: pending entries, taken over from dead consumers with XCLAIM; files: the
resume checkpoint). A record that is bad on its own (no payload, an implausible timestamp, an unreadable path) travels as an item with ``error`` set and
is dead-lettered by the worker; it never stops the source.
URIs: ``dir:///path?glob=*.jpg&follow=1`` (or a plain path), ``parquet:///path/file.parquet?image_column=image``,
``redis://127.0.0.1:6379/0?stream=frames&group=splice``; see docs/pipeline.md.
"""

from workers.sources.arrow_files import ParquetSource
from workers.sources.base import Source, SourceBatch
from workers.sources.directory import DirectorySource
from workers.sources.paths import DEFAULT_MAX_PAYLOAD_BYTES, read_path_payload
from workers.sources.redis_streams import RedisSource
from workers.sources.timestamps import parse_timestamp
from workers.sources.uri import open_source, parse_uri

__all__ = ["SourceBatch", "Source", "DirectorySource", "ParquetSource", "RedisSource", "open_source", "parse_uri",
           "parse_timestamp", "read_path_payload", "DEFAULT_MAX_PAYLOAD_BYTES"]
