"""Read a shard file into batches of records, keeping every record the file holds.

Each reader yields polars DataFrames with RECORD_SCHEMA. A record that cannot give a text (bad JSON, no text field,
undecodable bytes, a malformed CSV row) is not dropped: it carries an `error` code, a `detail`, and its `raw`
content, and ends up in the `raw_text_rejects` table. Only a problem with the whole file (unreadable, not the
format its name says, no text column) raises SourceFileError, naming the file and the problem.

Encoding: UTF-8 (a leading byte-order mark is removed). Bytes that are not UTF-8 reject their record; `raw` keeps
them as backslash escapes so nothing is lost.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from persona_hub_dagster.lib import filesystems

RECORD_SCHEMA = {
    "record_index": pl.Int64,
    "text": pl.String,
    "source_fields": pl.String,  # the record's other fields as a JSON object (title, url, ...)
    "error": pl.String,
    "detail": pl.String,
    "raw": pl.String,  # only for records with an error: what the file held
}


class SourceFileError(ValueError):
    """The file as a whole cannot be read as a shard."""


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    format: str  # jsonl | parquet | csv | txt
    compression: str | None = None
    text_column: str = "text"


@dataclass
class ReadStats:
    """What the reader saw, for the file-level checks that can only be made at the end."""

    records: int = 0
    with_text_field: int = 0
    invalid_syntax: int = 0


def read_records(
    spec: SourceSpec, *, batch_size: int = 20_000, stats: ReadStats | None = None
) -> Iterator[pl.DataFrame]:
    stats = stats if stats is not None else ReadStats()
    readers = {"jsonl": _read_jsonl, "txt": _read_txt, "csv": _read_csv, "parquet": _read_parquet}
    if spec.format not in readers:
        raise SourceFileError(f"{spec.uri}: unknown format {spec.format!r}; expected one of {sorted(readers)}")
    try:
        yield from readers[spec.format](spec, batch_size, stats)
    except SourceFileError:
        raise
    except FileNotFoundError as exc:
        raise SourceFileError(f"{spec.uri}: file not found") from exc
    except (OSError, pa.ArrowException, EOFError) as exc:
        what = f"{spec.compression}-compressed {spec.format}" if spec.compression else spec.format
        raise SourceFileError(f"{spec.uri}: cannot be read as {what}: {exc}") from exc

    if stats.records and stats.invalid_syntax == stats.records:
        raise SourceFileError(f"{spec.uri}: not a single record is valid {spec.format}; is the format right?")
    if stats.records and stats.with_text_field == 0 and spec.format == "jsonl":
        raise SourceFileError(
            f"{spec.uri}: no record has the text field {spec.text_column!r}; set the text column for this shard"
        )


class _Batcher:
    """Collects record rows column-wise and emits DataFrames of `size` rows."""

    def __init__(self, size: int):
        self.size = size
        self.columns: dict[str, list] = {name: [] for name in RECORD_SCHEMA}

    def add(self, index, text=None, fields=None, error=None, detail=None, raw=None) -> pl.DataFrame | None:
        c = self.columns
        c["record_index"].append(index)
        c["text"].append(text)
        c["source_fields"].append(fields)
        c["error"].append(error)
        c["detail"].append(detail)
        c["raw"].append(raw)
        return self.flush() if len(c["record_index"]) >= self.size else None

    def flush(self) -> pl.DataFrame | None:
        if not self.columns["record_index"]:
            return None
        frame = pl.DataFrame(self.columns, schema=RECORD_SCHEMA)
        self.columns = {name: [] for name in RECORD_SCHEMA}
        return frame


def _escaped(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _undecodable(exc: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {exc.start}"


# ---------------------------------------------------------------------------------------------------- JSONL


def _read_jsonl(spec: SourceSpec, batch_size: int, stats: ReadStats) -> Iterator[pl.DataFrame]:
    batcher = _Batcher(batch_size)
    field = spec.text_column
    with filesystems.open_binary(spec.uri, spec.compression) as stream:
        for index, line in enumerate(stream):
            if index == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue  # blank lines separate nothing in JSONL and hold no record
            stats.records += 1
            out = None
            try:
                record = orjson.loads(line)  # also rejects invalid UTF-8
            except orjson.JSONDecodeError as exc:
                stats.invalid_syntax += 1
                try:
                    line.decode("utf-8")
                    error, detail = "invalid_json", str(exc)
                except UnicodeDecodeError as decode_exc:
                    error, detail = "undecodable_bytes", _undecodable(decode_exc)
                out = batcher.add(index, error=error, detail=detail, raw=_escaped(line))
            else:
                if not isinstance(record, dict):
                    out = batcher.add(index, error="not_an_object", detail=type(record).__name__, raw=_escaped(line))
                elif field not in record or record[field] is None:
                    out = batcher.add(index, error="missing_text", detail=f"no {field!r} field", raw=_escaped(line))
                else:
                    stats.with_text_field += 1
                    text = record.pop(field)
                    if not isinstance(text, str):
                        out = batcher.add(
                            index, error="text_not_string", detail=type(text).__name__, raw=_escaped(line)
                        )
                    else:
                        fields = orjson.dumps(record).decode() if record else None
                        out = batcher.add(index, text=text, fields=fields)
            if out is not None:
                yield out
    if (last := batcher.flush()) is not None:
        yield last


# ---------------------------------------------------------------------------------------------------- .txt


def _read_txt(spec: SourceSpec, batch_size: int, stats: ReadStats) -> Iterator[pl.DataFrame]:
    """One document per paragraph; paragraphs are separated by blank lines."""
    batcher = _Batcher(batch_size)
    paragraph: list[bytes] = []
    index = 0

    def close() -> pl.DataFrame | None:
        nonlocal index
        data = b"\n".join(paragraph)
        paragraph.clear()
        stats.records += 1
        stats.with_text_field += 1
        try:
            out = batcher.add(index, text=data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            out = batcher.add(index, error="undecodable_bytes", detail=_undecodable(exc), raw=_escaped(data))
        index += 1
        return out

    with filesystems.open_binary(spec.uri, spec.compression) as stream:
        for line_number, line in enumerate(stream):
            if line_number == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            line = line.rstrip(b"\r\n")
            if line.strip():
                paragraph.append(line)
            elif paragraph and (out := close()) is not None:
                yield out
        if paragraph and (out := close()) is not None:
            yield out
    if (last := batcher.flush()) is not None:
        yield last


# ---------------------------------------------------------------------------------------------------- CSV


def _read_csv(spec: SourceSpec, batch_size: int, stats: ReadStats) -> Iterator[pl.DataFrame]:
    malformed: list[tuple[int | None, str]] = []

    def on_invalid_row(row) -> str:
        malformed.append((row.number, row.text))
        return "skip"

    names = _csv_header(spec)
    if spec.text_column not in names:
        raise SourceFileError(f"{spec.uri}: no column {spec.text_column!r}; the columns are {names}")
    # Every column is read as written (no type inference, which can fail half-way through a file); the text column
    # as bytes, so that one undecodable value rejects one record instead of the file.
    column_types = {name: pa.string() for name in names} | {spec.text_column: pa.binary()}
    stream = filesystems.open_binary(spec.uri, spec.compression)
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid_row),
        convert_options=pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=False),
    )
    others = [n for n in names if n != spec.text_column]
    index = 0
    batcher = _Batcher(batch_size)

    def flush_malformed() -> Iterator[pl.DataFrame]:
        for number, text in malformed:
            stats.records += 1
            stats.invalid_syntax += 1
            where = f"CSV line {number}" if number is not None else "CSV row at an unknown line"
            if (out := batcher.add(None, error="malformed_row", detail=where, raw=text)) is not None:
                yield out
        malformed.clear()

    with stream:
        for batch in reader:
            yield from flush_malformed()
            yield from _add_table_batch(batcher, batch, spec.text_column, others, index, stats)
            index += batch.num_rows
    yield from flush_malformed()
    if (last := batcher.flush()) is not None:
        yield last


# ---------------------------------------------------------------------------------------------------- Parquet


def _read_parquet(spec: SourceSpec, batch_size: int, stats: ReadStats) -> Iterator[pl.DataFrame]:
    try:
        parquet = pq.ParquetFile(filesystems.open_random_access(spec.uri))
    except pa.ArrowInvalid as exc:
        raise SourceFileError(f"{spec.uri}: cannot be read as parquet: {exc}") from exc
    schema = parquet.schema_arrow
    if spec.text_column not in schema.names:
        raise SourceFileError(f"{spec.uri}: no column {spec.text_column!r}; the columns are {schema.names}")
    text_type = schema.field(spec.text_column).type
    if not (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_binary(text_type)
        or pa.types.is_large_binary(text_type)
        or pa.types.is_string_view(text_type)
    ):
        raise SourceFileError(f"{spec.uri}: column {spec.text_column!r} holds {text_type}, not text")
    others = [n for n in schema.names if n != spec.text_column]
    index = 0
    batcher = _Batcher(batch_size)
    for batch in parquet.iter_batches(batch_size=batch_size):
        yield from _add_table_batch(batcher, batch, spec.text_column, others, index, stats)
        index += batch.num_rows
    if (last := batcher.flush()) is not None:
        yield last


def _csv_header(spec: SourceSpec) -> list[str]:
    """The column names: the first record, read on its own so that a malformed data row cannot fail it."""
    with filesystems.open_binary(spec.uri, spec.compression) as stream:
        lines = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        header = next(csv.reader(lines), None)
    if not header:
        raise SourceFileError(f"{spec.uri}: cannot be read as csv: no header row")
    return header


def _add_table_batch(
    batcher: _Batcher, batch: pa.RecordBatch, text_column: str, others: list[str], first_index: int, stats: ReadStats
) -> Iterator[pl.DataFrame]:
    """The records of one columnar batch (CSV or Parquet): the text column, plus the other columns as JSON."""
    fields = _fields_as_json(batch, others)
    for i, value in enumerate(batch.column(text_column).to_pylist()):
        stats.records += 1
        stats.with_text_field += 1
        if (out := _add_decoded(batcher, first_index + i, value, fields[i] if fields else None)) is not None:
            yield out


def _add_decoded(batcher: _Batcher, index: int, value, fields: str | None) -> pl.DataFrame | None:
    if value is None:
        return batcher.add(index, fields=fields, error="missing_text", detail="null text", raw=fields or "")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return batcher.add(
                index, fields=fields, error="undecodable_bytes", detail=_undecodable(exc), raw=_escaped(value)
            )
    return batcher.add(index, text=value, fields=fields)


def _fields_as_json(batch: pa.RecordBatch, columns: list[str]) -> list[str] | None:
    """The other columns of each row as one JSON object string, vectorized."""
    if not columns:
        return None
    frame = pl.from_arrow(pa.Table.from_batches([batch.select(columns)]))
    return frame.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()
