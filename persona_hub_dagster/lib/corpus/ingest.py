"""Ingest one shard: read, clean, drop exact duplicates, and account for every record.

`ShardIngest.accepted()` streams the rows of raw_text as Arrow record batches (memory stays bounded by the batch
size, whatever the shard's size); everything that was not accepted is collected for raw_text_rejects with a reason.
Each record of the file ends up in exactly one of the two tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from persona_hub_dagster.lib.corpus.cleaning import CLEANING_VERSION, UNICODE_FORMS, CleaningOptions, clean_records
from persona_hub_dagster.lib.corpus.readers import ReadStats, SourceSpec, read_records
from persona_hub_dagster.lib.ids import content_ids
from persona_hub_dagster.lib.personas import MIN_PERSONA_CHARS
from persona_hub_dagster.lib.settings import setting
from persona_hub_dagster.lib.storage import capped

RAW_TEXT_SCHEMA = pa.schema(
    [
        pa.field("text_id", pa.string(), nullable=False),  # content hash of the cleaned text
        pa.field("shard", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field(
            "record_index", pa.int64()
        ),  # position in the file: line (JSONL), row (CSV, Parquet), paragraph (.txt)
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_chars", pa.int64(), nullable=False),
        pa.field("source_fields", pa.string()),  # the record's other fields as JSON (title, url, ...)
        pa.field("cleaning_version", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("record_index", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("duplicate_of", pa.string()),  # text_id of the kept copy, for reason == "duplicate"
        pa.field("raw", pa.string(), nullable=False),  # the record as the file held it (cut at RAW_LIMIT_CHARS)
        pa.field("raw_chars", pa.int64()),  # its full length
        pa.field("raw_hash", pa.string()),  # the content hash of the full record, where it was cut
        pa.field("source_fields", pa.string()),
        pa.field("cleaning_version", pa.string(), nullable=False),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

REJECT_REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_text",
    "text_not_string",
    "undecodable_bytes",
    "malformed_row",
    "empty",
    "too_short",
    "too_long",
    "duplicate",
)


@dataclass
class IngestReport:
    records: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def reject_rate(self) -> float:
        return self.rejected_total / self.records if self.records else 0.0


@dataclass(frozen=True)
class IngestSettings:
    """raw_text's settings (its run config): where the text is, how it is cleaned, how much is read at once."""

    text_column: str = setting(
        "text",
        "Field (JSONL) or column (CSV, Parquet) holding the text; a shard registered with its own --text-column "
        "uses that instead.",
    )
    unicode_form: str | None = setting(
        CleaningOptions.unicode_form,
        f"Unicode normalization: one of {', '.join(UNICODE_FORMS)}, or null for none.",
    )
    min_chars: int = setting(CleaningOptions.min_chars, "Texts shorter than this after cleaning are rejected.")
    max_chars: int = setting(CleaningOptions.max_chars, "Texts longer than this after cleaning are rejected.")
    min_persona_chars: int = setting(
        MIN_PERSONA_CHARS, "Persona shards: personas shorter than this are rejected (as generated ones are)."
    )
    max_persona_chars: int = setting(
        2000, "Persona shards: personas longer than this are rejected (a persona is a description, not a text)."
    )
    batch_size: int = setting(20_000, "Records per batch: bounds memory, whatever the shard size.")
    max_reject_rate: float = setting(
        0.5, "The reject-rate check warns when more of the shard's records than this are rejected."
    )

    def source(self, registered) -> SourceSpec:
        """Where a registered shard's records are and which field holds their text (a lib.shards.RegisteredShard)."""
        return SourceSpec(
            uri=registered.source_uri,
            format=registered.format,
            compression=registered.compression,
            text_column=registered.column(self.text_column),
        )

    def cleaning(self, given_personas: bool = False) -> CleaningOptions:
        """The rules for a shard's records: texts' bounds, or personas' for a persona shard."""
        if given_personas:
            return CleaningOptions(self.unicode_form, self.min_persona_chars, self.max_persona_chars)
        return CleaningOptions(self.unicode_form, self.min_chars, self.max_chars)


class ShardIngest:
    """One pass over a shard file. Consume `accepted()` fully, then read `rejects()` and `report`."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        shard: str,
        run_id: str,
        options: CleaningOptions | None = None,
        ingested_at: datetime | None = None,
        batch_size: int = IngestSettings.batch_size,
    ):
        self.spec = spec
        self.shard = shard
        self.run_id = run_id
        self.options = options or CleaningOptions()
        self.ingested_at = ingested_at or datetime.now(UTC)
        self.batch_size = batch_size
        self.report = IngestReport()
        self._rejects: list[pl.DataFrame] = []
        self._seen: set[str] = set()
        self._done = False

    def accepted(self) -> Iterator[pa.RecordBatch]:
        stats = ReadStats()
        for records in read_records(self.spec, batch_size=self.batch_size, stats=stats):
            batch = self._process(records)
            if batch.num_rows:
                yield batch
        self.report.records = stats.records
        self._done = True

    def rejects(self) -> pa.Table:
        if not self._done:
            raise RuntimeError("Consume accepted() to the end before asking for the rejects.")
        if not self._rejects:
            return REJECTS_SCHEMA.empty_table()
        return pl.concat(self._rejects).to_arrow().cast(REJECTS_SCHEMA)

    def _process(self, records: pl.DataFrame) -> pa.RecordBatch:
        frame = clean_records(records, self.options)
        readable = frame.filter(pl.col("error").is_null())
        text_ids = content_ids(readable["text"])
        # Exact duplicates: a text already kept in this shard, in an earlier batch or earlier in this one.
        is_duplicate = []
        for text_id in text_ids:
            is_duplicate.append(text_id in self._seen)
            self._seen.add(text_id)
        readable = readable.with_columns(text_id=pl.Series(text_ids, dtype=pl.String))
        duplicate_mask = pl.Series(is_duplicate, dtype=pl.Boolean)
        kept = readable.filter(~duplicate_mask)
        duplicates = readable.filter(duplicate_mask)

        constants = {
            "shard": pl.lit(self.shard),
            "source_uri": pl.lit(self.spec.uri),
            "cleaning_version": pl.lit(CLEANING_VERSION),
            "ingested_at": pl.lit(self.ingested_at).dt.cast_time_unit("us").dt.convert_time_zone("UTC"),
            "run_id": pl.lit(self.run_id),
        }
        rejected = pl.concat(
            [
                frame.filter(pl.col("error").is_not_null()).select(
                    "record_index",
                    reason=pl.col("error"),
                    detail=pl.col("detail"),
                    duplicate_of=pl.lit(None, pl.String),
                    raw=pl.coalesce("raw", "original", pl.lit("")),
                    source_fields=pl.col("source_fields"),
                ),
                duplicates.select(
                    "record_index",
                    reason=pl.lit("duplicate"),
                    detail=pl.lit("exact duplicate of an earlier text in this shard"),
                    duplicate_of=pl.col("text_id"),
                    raw=pl.col("original"),
                    source_fields=pl.col("source_fields"),
                ),
            ]
        )
        if rejected.height:
            self._rejects.append(capped(rejected.with_columns(**constants), "raw").select(REJECTS_SCHEMA.names))
            self.report.rejected.update(rejected["reason"].to_list())
        self.report.accepted += kept.height
        accepted = kept.with_columns(**constants).select(RAW_TEXT_SCHEMA.names)
        table = accepted.to_arrow().cast(RAW_TEXT_SCHEMA)
        return (
            table.combine_chunks().to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], RAW_TEXT_SCHEMA)
        )
