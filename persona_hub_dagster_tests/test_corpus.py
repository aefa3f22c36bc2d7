"""Reading, cleaning and accounting for shard files of every format (lib.corpus)."""

import bz2
import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from persona_hub_dagster.lib.corpus.cleaning import CleaningOptions, clean_records, cleaned, normalized
from persona_hub_dagster.lib.corpus.ingest import RAW_TEXT_SCHEMA, REJECTS_SCHEMA, ShardIngest
from persona_hub_dagster.lib.corpus.readers import SourceFileError, SourceSpec, read_records
from persona_hub_dagster.lib.ids import content_id

GOOD = [
    "A clinical guideline recommends hand hygiene before and after every patient contact.",
    "Whisk two eggs with sugar until pale, then fold in the flour gently.",
    "The home side equalised in the ninetieth minute after a corner kick.",
]


def ingest(path: Path, file_format: str, compression=None, text_column="text", **options):
    job = ShardIngest(
        SourceSpec(str(path), file_format, compression, text_column),
        shard="s",
        run_id="run-1",
        options=CleaningOptions(**options),
        batch_size=4,  # small batches: the batch boundaries are part of what is tested
    )
    accepted = pa.Table.from_batches(list(job.accepted()), schema=RAW_TEXT_SCHEMA)
    return pl.from_arrow(accepted), pl.from_arrow(job.rejects()), job.report


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# ------------------------------------------------------------------------------------------------ cleaning


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello\t\t world  ", "Hello world"),
        ("line one  \r\n  line two", "line one\nline two"),
        ("para one\n\n\n\n\npara two", "para one\n\npara two"),
        ("no\u00a0break\u2003space", "no break space"),
        ("bell\x07 and nul\x00 removed\x7f", "bell and nul removed"),
        ("e\u0301", "\u00e9"),  # NFC composes
        ("x\u00b2 stays", "x\u00b2 stays"),  # NFC keeps superscripts (NFKC would make them 'x2')
    ],
)
def test_cleaning_rules(raw, expected):
    assert clean(raw, "NFC") == expected


def clean(raw: str, form: str | None) -> str:
    return pl.select(cleaned(pl.lit(normalized(pl.Series([raw]), form)[0]))).item()


def test_nfkc_is_available_but_opt_in():
    assert clean("\uff21\ufb01 x\u00b2", "NFKC") == "Afi x2"
    assert clean("e\u0301", None) == "e\u0301"


def test_whitespace_rules_agree_with_the_plain_definition():
    """The fast whitespace pattern must do exactly what 'every run of blanks becomes one space' says."""
    import random
    import re

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\t", "\u00a0", "\u3000", "\n", " \n ", "x"]
    for _ in range(500):
        raw = "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        expected = re.sub(r"[^\S\n]+", " ", raw)
        expected = re.sub(r"\n{3,}", "\n\n", re.sub(r" ?\n ?", "\n", expected)).strip()
        assert clean(raw, None) == expected, repr(raw)


def test_length_limits_reject_with_reasons():
    records = pl.DataFrame(
        {
            "record_index": [0, 1, 2, 3],
            "text": ["   ", "short", "x" * 30, "y" * 60],
            "source_fields": [None] * 4,
            "error": [None] * 4,
            "detail": [None] * 4,
            "raw": [None] * 4,
        },
        schema_overrides={"source_fields": pl.String, "error": pl.String, "detail": pl.String, "raw": pl.String},
    )
    out = clean_records(records, CleaningOptions(min_chars=10, max_chars=50))
    assert out["error"].to_list() == ["empty", "too_short", None, "too_long"]
    assert out["detail"][3] == "60 chars > max_chars 50"


def test_cleaning_options_are_validated():
    with pytest.raises(ValueError):
        CleaningOptions(unicode_form="NFX")
    with pytest.raises(ValueError):
        CleaningOptions(min_chars=10, max_chars=5)


# ------------------------------------------------------------------------------------------------ JSONL


def test_jsonl_keeps_every_record_somewhere(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            b"\xef\xbb\xbf" + json.dumps({"text": GOOD[0], "url": "https://example.com/1"}).encode(),
            json.dumps({"text": GOOD[1]}).encode(),
            b"",  # a blank line is not a record
            b"{not json",
            b"[1, 2]",
            json.dumps({"body": "no text field"}).encode(),
            json.dumps({"text": None}).encode(),
            json.dumps({"text": 42}).encode(),
            b'{"text": "bad bytes \xff\xfe in the middle of a long enough line"}',
            json.dumps({"text": "tiny"}).encode(),
            json.dumps({"text": "  " + GOOD[1] + "  "}).encode(),  # a duplicate once cleaned
            json.dumps({"text": GOOD[2]}).encode(),
        ],
    )
    accepted, rejects, report = ingest(path, "jsonl")

    assert accepted["text"].to_list() == [GOOD[0], GOOD[1], GOOD[2]]
    assert accepted["record_index"].to_list() == [0, 1, 11]
    assert json.loads(accepted["source_fields"][0]) == {"url": "https://example.com/1"}
    assert accepted["text_id"].to_list() == [content_id(t) for t in accepted["text"]]
    assert accepted["n_chars"].to_list() == [len(t) for t in accepted["text"]]
    assert set(accepted["shard"]) == {"s"} and set(accepted["run_id"]) == {"run-1"}
    assert set(accepted["source_uri"]) == {str(path)}

    reasons = dict(zip(rejects["record_index"].to_list(), rejects["reason"].to_list(), strict=True))
    assert reasons == {
        3: "invalid_json",
        4: "not_an_object",
        5: "missing_text",
        6: "missing_text",
        7: "text_not_string",
        8: "undecodable_bytes",
        9: "too_short",
        10: "duplicate",
    }
    raw = dict(zip(rejects["record_index"].to_list(), rejects["raw"].to_list(), strict=True))
    assert raw[3] == "{not json"
    assert "\\xff\\xfe" in raw[8]  # undecodable bytes are kept, escaped
    duplicate = rejects.filter(pl.col("reason") == "duplicate").row(0, named=True)
    assert duplicate["duplicate_of"] == content_id(GOOD[1])
    assert report.records == 11 and report.accepted == 3 and report.rejected_total == 8
    assert rejects.columns == REJECTS_SCHEMA.names


def test_jsonl_with_another_text_field_and_compression(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({"body": t}) + "\n" for t in GOOD).encode()))
    accepted, rejects, _ = ingest(path, "jsonl", compression="gzip", text_column="body")
    assert accepted["text"].to_list() == GOOD and rejects.is_empty()


def test_jsonl_without_the_text_field_anywhere_is_a_file_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [json.dumps({"body": t}).encode() for t in GOOD])
    with pytest.raises(SourceFileError, match=r"s\.jsonl: no record has the text field 'text'"):
        ingest(path, "jsonl")


def test_a_file_that_is_not_jsonl_at_all_is_a_file_error(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("this is prose\nnot json at all\n")
    with pytest.raises(SourceFileError, match="not a single record is valid jsonl"):
        ingest(path, "jsonl")


def test_corrupt_compression_is_a_file_error(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(SourceFileError, match=r"s\.jsonl\.gz: cannot be read as gzip-compressed jsonl"):
        ingest(path, "jsonl", compression="gzip")


def test_a_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(SourceFileError, match="file not found"):
        ingest(tmp_path / "gone.jsonl", "jsonl")


# ------------------------------------------------------------------------------------------------ .txt


def test_txt_paragraphs_are_documents(tmp_path):
    path = tmp_path / "s.txt.bz2"
    body = (
        f"{GOOD[0][:40]}\n{GOOD[0][40:]}\n\n\n{GOOD[1]}\n   \n".encode()
        + b"caf\xe9 latin-1 bytes are not utf-8, so this paragraph is rejected\n\n"
        + GOOD[2].encode()
    )
    path.write_bytes(bz2.compress(body))
    accepted, rejects, report = ingest(path, "txt", compression="bz2")
    # Lines of a paragraph are joined with a newline and then kept (cleaning only collapses blank-line runs).
    assert accepted["text"].to_list() == [f"{GOOD[0][:40]}\n{GOOD[0][40:]}", GOOD[1], GOOD[2]]
    assert accepted["record_index"].to_list() == [0, 1, 3]
    assert rejects.select("record_index", "reason").row(0) == (2, "undecodable_bytes")
    assert "caf\\xe9" in rejects["raw"][0]
    assert report.records == 4


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_with_malformed_rows_and_other_columns(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(
        b"id,text,lang\n"
        + f'1,"{GOOD[0]}",en\n'.encode()
        + b'2,"a quoted text, with a comma and\na newline inside it, long enough",en\n'
        + b"3,too,many,columns,here\n"
        + b'4,"bad \xff bytes in this csv value, long enough to pass",en\n'
        + b"5,,en\n"
        + f'0042,"{GOOD[2]}",de\n'.encode()
    )
    accepted, rejects, report = ingest(path, "csv")
    assert accepted["text"].to_list() == [
        GOOD[0],
        "a quoted text, with a comma and\na newline inside it, long enough",
        GOOD[2],
    ]
    # Other columns are kept as written (no type inference: the id keeps its leading zeros).
    assert json.loads(accepted["source_fields"][2]) == {"id": "0042", "lang": "de"}
    reasons = sorted(rejects["reason"].to_list())
    assert reasons == ["empty", "malformed_row", "undecodable_bytes"]
    malformed = rejects.filter(pl.col("reason") == "malformed_row").row(0, named=True)
    assert "too,many,columns" in malformed["raw"] and malformed["record_index"] is None
    assert report.records == 6


def test_csv_without_the_text_column_is_a_file_error(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,body\n1,hello\n")
    with pytest.raises(SourceFileError, match=r"s\.csv: no column 'text'; the columns are \['id', 'body'\]"):
        ingest(path, "csv")


# ------------------------------------------------------------------------------------------------ Parquet


def test_parquet_with_nulls_and_extra_columns(tmp_path):
    path = tmp_path / "s.parquet"
    table = pa.table({"content": [GOOD[0], None, GOOD[1], GOOD[0], GOOD[2]], "score": [0.5, 0.1, 0.9, 0.5, 0.7]})
    pq.write_table(table, path, row_group_size=2)
    accepted, rejects, report = ingest(path, "parquet", text_column="content")
    assert accepted["text"].to_list() == GOOD
    assert json.loads(accepted["source_fields"][1]) == {"score": 0.9}
    assert sorted(rejects["reason"].to_list()) == ["duplicate", "missing_text"]
    assert report.records == 5


def test_parquet_errors_name_the_file_and_the_problem(tmp_path):
    wrong_type = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), wrong_type)
    with pytest.raises(SourceFileError, match=r"numbers\.parquet: column 'text' holds int64, not text"):
        ingest(wrong_type, "parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SourceFileError, match=r"garbage\.parquet: cannot be read as parquet"):
        ingest(garbage, "parquet")


# ------------------------------------------------------------------------------------------------ batching


def test_duplicates_are_found_across_batches(tmp_path):
    lines = [json.dumps({"text": GOOD[i % 3]}).encode() for i in range(20)]
    accepted, rejects, report = ingest(write_jsonl(tmp_path / "s.jsonl", lines), "jsonl")
    assert accepted.height == 3 and rejects.height == 17
    assert set(rejects["reason"]) == {"duplicate"}


def test_reader_batches_have_the_record_schema(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [json.dumps({"text": t}).encode() for t in GOOD * 3])
    batches = list(read_records(SourceSpec(str(path), "jsonl"), batch_size=4))
    assert [b.height for b in batches] == [4, 4, 1]
