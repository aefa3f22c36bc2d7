"""The hub at scale: shards of 10^5 generated personas, one after another, each hub step in a fresh process.

    nice .venv/bin/python bench/hub_scale.py --root /tmp/hub_scale/after --shards 20 --out bench/hub_scale_after.jsonl
    # today's code before the index, from a checkout of it (`git archive <commit> persona_hub_dagster | tar -x -C DIR`):
    nice .venv/bin/python bench/hub_scale.py --root /tmp/hub_scale/before --shards 4 --code DIR \
        --out bench/hub_scale_before.jsonl

Per shard k, three fresh processes:
1. generate: persona_corpus (bench/persona_corpus.py) with ~10% near-duplicates planted within the shard, plus
   PLANTED_ACROSS variants (copy, shuffle, word inserted/deleted/substituted, paraphrase) of personas of up to three
   earlier shards; written as the shard's text_personas partition.
2. hub: the hub step of shard k against shards 0..k-1 (lib.dedup.hub.build_shard: candidates, the three passes on
   the index, the tables written, the index appended); reports seconds, peak RSS (getrusage of this process, which
   did nothing else), bytes read (/proc/self/io rchar: every read syscall, Delta's and RocksDB's included; the
   inverted file's own reads separately), the decisions, and the index's size.
3. evaluate (every --eval-every shards): recall and precision of the cross-shard semantic drops against an exact
   search: a sample of the shard's candidates that reached the semantic pass, compared by brute force with every
   kept vector of every earlier shard (read shard by shard from the embeddings table); recall = share of those with
   an exact earlier match >= the threshold that the hub dropped for an earlier shard; precision = share of the
   sample's cross-shard semantic drops whose exact cosine with the recorded persona reaches the threshold;
   `same_representative` = share of those whose recorded persona is the exact search's earliest one. Also: the
   share of planted cross-shard variants dropped for an earlier shard (by MinHash or embeddings).

Reaching 10^7 personas through the hub step takes ~4 hours of this machine, so `--fill-from A --fill-personas N`
builds the index of shards A, A+1, ... directly, until it holds N personas: each shard's generated personas (without
plants) are added whole as the shard's entries (band keys and vectors; `HubIndex.add`, as the hub step does,
retraining included; no tables). No pass drops anything: the index holds the ~10% within-shard near-duplicates and the
near-duplicate vectors a real hub would drop (longer band-key lists and denser vector lists than a real hub of that
size: a pessimistic case; running the MinHash pass in the fill made it 3x slower and kept ~90% anyway). The shards
after those then run the real hub step against an index of the size the curve needs (the index's catch-up is skipped:
it would remove the filled shards, which have no hub tables), and evaluation reads earlier vectors from the index
instead of the tables.

The quality pass is off (per-shard work that never reads earlier shards). Embeddings: a hashed bag of words (every
distinct lower-cased word gets a fixed pseudo-random 256-d vector from its hash; a text is the normalized sum), so
near-duplicate texts have near vectors and nothing downloads, and the bench measures the hub, not an embedding
model. Threshold 0.9, the hub's default. Peak RSS includes the imports (~0.3 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
PLANTED_ACROSS = 3_000
DIM = 256
THRESHOLD = 0.9
ENCODE_BATCH = 50_000


class HashedBagEmbedder:
    identity = f"bench:hashed-bag-{DIM}"

    def __init__(self):
        self._vectors: dict[str, np.ndarray] = {}

    def unreadable(self, texts):
        return [None] * len(texts)

    def encode(self, texts) -> np.ndarray:
        # In parts, as a real embedder batches: the bench measures the hub, not a word table of 10^6 texts at once.
        texts = list(texts)
        parts = [self._encode(texts[i : i + ENCODE_BATCH]) for i in range(0, len(texts), ENCODE_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, DIM), np.float32)

    def _encode(self, texts) -> np.ndarray:
        import polars as pl

        words = (
            pl.DataFrame({"text": list(texts)}, schema={"text": pl.String})
            .with_row_index("doc")
            .select("doc", word=pl.col("text").str.to_lowercase().str.extract_all(r"\w+"))
            .explode("word")
            .drop_nulls("word")
        )
        vocabulary = words["word"].unique().to_list()
        for word in vocabulary:
            if word not in self._vectors:
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                self._vectors[word] = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        table = np.stack([self._vectors[w] for w in vocabulary]) if vocabulary else np.zeros((0, DIM), np.float32)
        ids = pl.Series(vocabulary, dtype=pl.String).to_frame("word").with_row_index("id")
        coded = words.join(ids, on="word", how="left")
        from scipy.sparse import csr_matrix

        counts = csr_matrix(
            (np.ones(coded.height, dtype=np.float32), (coded["doc"].to_numpy(), coded["id"].to_numpy())),
            shape=(len(texts), len(vocabulary)),
        )
        out = np.asarray(counts @ table, dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def shard_name(k: int) -> str:
    return f"scale-{k:04d}"


def shard_texts(k: int, n: int) -> tuple[list[str], list[int]]:
    """(texts, planted_from): planted_from[i] = the earlier shard a cross-shard plant was made from, else -1."""
    sys.path.insert(0, str(BENCH))
    from persona_corpus import VARIANT_KINDS, persona_corpus, variant

    texts, _ = persona_corpus(n - (PLANTED_ACROSS if k else 0), duplicate_share=0.1, seed=1000 + k)
    planted_from = [-1] * len(texts)
    if k:
        rng = random.Random(k)
        sources = sorted(rng.sample(range(k), min(k, 3)))
        earlier = {
            j: persona_corpus(n - (PLANTED_ACROSS if j else 0), duplicate_share=0.1, seed=1000 + j)[0] for j in sources
        }
        for _ in range(PLANTED_ACROSS):
            j = rng.choice(sources)
            texts.append(variant(rng.choice(earlier[j]), rng.choice(VARIANT_KINDS), rng))
            planted_from.append(j)
    return texts, planted_from


def generate(root: str, k: int, n: int) -> dict:
    import polars as pl

    from persona_hub_dagster.lib.ids import content_ids
    from persona_hub_dagster.lib.storage import DeltaStore

    texts, planted_from = shard_texts(k, n)
    shard = shard_name(k)
    frame = pl.DataFrame(
        {
            "persona_id": content_ids(texts),
            "persona": texts,
            "shard": shard,
            "text_id": [f"{shard}-{i:07d}" for i in range(len(texts))],
            "planted_from": planted_from,
        }
    )
    DeltaStore(root=root).write_partitions("text_personas", frame, partitions=[shard])
    return {"candidates": len(texts)}


def fill(root: str, k: int, n: int) -> dict:
    """Shard k straight into the index (see the module's docstring): its personas, their band keys and vectors."""
    sys.path.insert(0, str(BENCH))
    from persona_corpus import persona_corpus

    from persona_hub_dagster.lib.dedup import build, hub
    from persona_hub_dagster.lib.dedup.index import ShardEntries
    from persona_hub_dagster.lib.ids import content_ids
    from persona_hub_dagster.lib.storage import DeltaStore

    started, cpu_before = time.perf_counter(), _cpu_seconds()
    texts, _ = persona_corpus(n - (PLANTED_ACROSS if k else 0), duplicate_share=0.1, seed=1000 + k)
    settings = hub.HubSettings(quality_filter=False)
    rows, embedder = np.arange(len(texts)), HashedBagEmbedder()
    keys, sketches = build.minhash_entries_of(texts, settings)
    entries = ShardEntries(
        shard=shard_name(k),
        run_id="fill",
        positions=rows,
        persona_ids=content_ids(texts),
        texts=texts,
        keys=keys,
        sketches=sketches,
        vector_positions=rows,
        vectors=embedder.encode(texts),
        model=embedder.identity,
    )
    with build.open_index(DeltaStore(root=root)) as index:
        index.add(entries, build.index_layout(settings))
        stats = {**index.stats(), "index_seconds": getattr(index, "seconds", {})}
    return {
        "filled": True,
        "fill_seconds": round(time.perf_counter() - started, 2),
        "fill_cpu_seconds": round(_cpu_seconds() - cpu_before, 2),
        "counts": {"candidates": len(texts), "kept": len(rows)},
        **stats,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rchar() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar")).split()[1])


def hub_step(root: str, k: int, catch_up: bool = True) -> dict:
    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.dedup import hub
    from persona_hub_dagster.lib.storage import DeltaStore

    try:
        from persona_hub_dagster.lib.dedup import build
    except ImportError:  # the code before the index
        build = None
    store = DeltaStore(root=root)
    shard, prefix = shard_name(k), [shard_name(j) for j in range(k)]
    # The quality rules are per-shard work that never touches earlier shards (~0.5 ms a persona: 50 s per shard here);
    # off, so the bench spends its hours on what grows with the hub.
    settings = hub.HubSettings(quality_filter=False)
    embedder = HashedBagEmbedder()
    read_before, started, cpu_before = _rchar(), time.perf_counter(), _cpu_seconds()
    extra = {}
    if build is not None:  # the index
        with build.open_index(store) as index:
            if catch_up:
                build.catch_up_index(index, store, settings, embedder)
            elif hasattr(build, "complete_sketches"):  # filled shards have no tables: only the index's own upgrades
                extra["sketched"] = len(build.complete_sketches(index, settings))
                extra["tables_upgraded"] = index.upgrade_tables()
            counts, _ = build.build_shard(
                store,
                index,
                shard,
                prefix=prefix,
                prefix_expected=prefix,
                settings=settings,
                embedder=embedder,
                run_id=f"bench-{k}",
            )
            extra |= {
                "vector_bytes_read": index.bytes_read,
                "index_seconds": getattr(index, "seconds", {}),
                **index.stats(),
            }
    else:  # today's code: whole-table lookups
        import polars as pl

        candidates = hub.load_candidates(store, shard)
        result = hub.dedup_shard(
            store, shard, candidates, prefix=prefix, settings=settings, embedder=embedder, run_id=f"bench-{k}"
        )
        counts = result.counts
        run = pl.DataFrame([{**result.run, "prefix_expected": prefix}], schema=hub.RUNS_SCHEMA)
        for table, frame in (
            (tables.PERSONA_HUB, result.hub),
            (tables.PERSONA_HUB_DECISIONS, result.decisions),
            (tables.HUB_MINHASH_BANDS, result.bands),
            (tables.HUB_EMBEDDINGS, result.embeddings),
            (tables.HUB_RUNS, run),
        ):
            store.write_partitions(table, frame, partitions=[shard])
    seconds, cpu, read = time.perf_counter() - started, _cpu_seconds() - cpu_before, _rchar() - read_before
    decisions = store.scan(tables.PERSONA_HUB_DECISIONS, [shard]).select("reason", "duplicate_of_shard").collect()
    import polars as pl

    cross = decisions.filter(pl.col("duplicate_of_shard").is_not_null() & (pl.col("duplicate_of_shard") != shard))
    return {
        "hub_seconds": round(seconds, 2),
        "hub_cpu_seconds": round(cpu, 2),  # less sensitive than wall time to a busy machine
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "bytes_read": read,
        "counts": counts,
        "cross_shard_drops": {r: int(c) for r, c in cross.group_by("reason").len().iter_rows()},
        **extra,
    }


def evaluate(root: str, k: int, sample: int) -> dict:
    import polars as pl

    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.storage import DeltaStore

    store = DeltaStore(root=root)
    shard = shard_name(k)
    decisions = store.read(tables.PERSONA_HUB_DECISIONS, [shard])
    planted = store.scan("text_personas", [shard]).select("persona_id", "planted_from").collect().unique("persona_id")
    decisions = decisions.join(planted, on="persona_id", how="left")
    plants = decisions.filter(pl.col("planted_from") >= 0)
    planted_found = plants.filter(pl.col("duplicate_of_shard").is_not_null() & (pl.col("duplicate_of_shard") != shard))
    # Candidates that reached the semantic pass's lookup of earlier shards.
    reached = decisions.filter(pl.col("reason").is_null() | (pl.col("reason") == "semantic"))
    picked = reached.sample(min(sample, reached.height), seed=k)
    queries = HashedBagEmbedder().encode(picked["persona"].to_list())
    best_sim = np.full(len(queries), -1.0, dtype=np.float32)
    earliest = [None] * len(queries)
    recorded = dict(zip(picked["duplicate_of"].to_list(), range(len(queries)), strict=False))
    recorded_sim = {}
    wanted = {
        pid
        for pid, s in zip(picked["duplicate_of"].to_list(), picked["duplicate_of_shard"].to_list(), strict=True)
        if s and s != shard
    }
    for ids, vectors in _earlier_vectors(store, k):
        sims = queries @ vectors.T
        for q, row in zip(*np.nonzero(sims >= THRESHOLD), strict=True):
            if earliest[q] is None:
                earliest[q] = ids[row]
        best_sim = np.maximum(best_sim, sims.max(axis=1))
        for row, pid in enumerate(ids):
            if pid in wanted:
                recorded_sim[pid] = sims[:, row].copy()  # not a view: it would keep the whole block alive
    del recorded
    cross = (picked["reason"] == "semantic") & (picked["duplicate_of_shard"] != shard)
    has_match = best_sim >= THRESHOLD
    cross_np = cross.fill_null(False).to_numpy()
    dup_of = picked["duplicate_of"].to_list()
    precise = [
        recorded_sim[dup_of[q]][q] >= THRESHOLD - 1e-6 for q in np.flatnonzero(cross_np) if dup_of[q] in recorded_sim
    ]
    same = [dup_of[q] == earliest[q] for q in np.flatnonzero(cross_np)]
    return {
        "sample": len(queries),
        "exact_matches": int(has_match.sum()),
        "semantic_recall": round(float(cross_np[has_match].mean()), 4) if has_match.any() else None,
        "semantic_precision": round(float(np.mean(precise)), 4) if precise else None,
        "same_representative": round(float(np.mean(same)), 4) if same else None,
        "planted_across": plants.height,
        "planted_found": round(planted_found.height / plants.height, 4) if plants.height else None,
    }


def _earlier_vectors(store, k: int):
    """(persona ids, vectors) of each earlier shard's kept personas, in keep-first order: from the index where it
    holds the shard (filled shards have no tables), else from the embeddings table (the code before the index)."""
    from persona_hub_dagster.lib import tables
    from persona_hub_dagster.lib.dedup.build import open_index
    from persona_hub_dagster.lib.embeddings import vector_array

    index_folder = Path(store.table_uri(tables.HUB_INDEX_PATH))
    index = open_index(store) if (index_folder / "manifest.json").exists() else None
    try:
        for j in range(k):
            entry = index.manifest.shards.get(shard_name(j)) if index else None
            if entry is not None:
                if not entry.vectors:
                    continue
                vectors, positions = index._read_segment(entry.sid)
                order = np.argsort(positions, kind="stable")  # stored by list; the earliest match wants hub order
                vectors, positions = vectors[order], positions[order]
                ids, _ = index.personas(np.full(len(positions), entry.sid, dtype=np.int64), positions)
                yield ids, vectors
                continue
            stored = store.scan(tables.HUB_EMBEDDINGS, [shard_name(j)]).select("persona_id", "vector").collect()
            if not stored.is_empty():
                yield stored["persona_id"].to_list(), vector_array(stored["vector"])
    finally:
        if index is not None:
            index.close()


def report(path: str) -> str:
    """The per-shard table of a run in markdown, with time fitted as a + b·ln P (over the shards after the last
    retraining of the index, and over all) and peak memory as a + b·P."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    filled = [r for r in rows if r.get("filled")]
    rows = [r for r in rows if not r.get("filled")]
    lines = []
    if filled:
        lines.append(
            f"Filled (index only): shards {filled[0]['shard']}-{filled[-1]['shard']}, "
            f"{sum(r['counts']['kept'] for r in filled):,} personas, {sum(r['fill_seconds'] for r in filled):,.0f} s; "
            f"slowest fill shard {max(r['fill_seconds'] for r in filled):.0f} s (nlist {filled[-1]['nlist']})\n"
        )
    lines += [
        "| shard | prior kept P | hub s | hub CPU s | peak RSS GB | MB read | cross-shard drops (minhash / semantic) "
        "| semantic recall vs exact | precision | planted found | nlist |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cross = r["cross_shard_drops"]
        lines.append(
            f"| {r['shard']} | {r['prior_kept']:,} | {r['hub_seconds']:.0f} | {_fmt(r.get('hub_cpu_seconds'), 0)} "
            f"| {r['peak_rss_gb']:.2f} | {r['bytes_read'] / 1e6:,.0f} | {cross.get('minhash', 0):,} / "
            f"{cross.get('semantic', 0):,} | {_fmt(r.get('semantic_recall'))} | {_fmt(r.get('semantic_precision'))} "
            f"| {_fmt(r.get('planted_found'))} | {r.get('nlist', '')} |"
        )
    with_prior = [r for r in rows if r["prior_kept"]]
    if len(with_prior) >= 2:
        last_change = max(
            (i for i in range(1, len(rows)) if rows[i].get("nlist") != rows[i - 1].get("nlist")), default=0
        )
        for label, subset in (("all shards", with_prior), ("after the last retraining", rows[last_change + 1 :])):
            subset = [r for r in subset if r["prior_kept"] and r.get("hub_cpu_seconds")]
            if len(subset) < 2:
                continue
            x = np.log([r["prior_kept"] for r in subset])
            for column in ("hub_seconds", "hub_cpu_seconds"):
                b, a = np.polyfit(x, [r[column] for r in subset], 1)
                lines.append(f"\n{column} = {a:.1f} + {b:.2f}·ln P ({label}, {len(subset)} shards)")
        p = np.array([r["prior_kept"] for r in rows]) / 1e6
        b, a = np.polyfit(p, [r["peak_rss_gb"] for r in rows], 1)
        lines.append(f"\npeak RSS = {a:.2f} GB + {b:.3f} GB per million prior personas ({len(rows)} shards)")
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _use_code(code: str) -> None:
    """Import persona_hub_dagster from `code` instead of this checkout (whose editable install would win)."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, code)


def _child(args: list[str], code: str | None) -> dict:
    env = dict(os.environ)
    if code:
        args = [*args, "--code", code]
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--per-shard", type=int, default=100_000)
    parser.add_argument("--code", help="a checkout of the code to measure (default: this one)")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", action="store_true", help="print --out's table and fits, run nothing")
    parser.add_argument("--until", help="UTC time HH:MM after which no new shard starts")
    parser.add_argument("--fill-from", type=int, help="from this shard on, shards go straight into the index...")
    parser.add_argument("--fill-personas", type=int, default=0, help="...until it holds this many (see above)")
    parser.add_argument("--step", choices=["generate", "fill", "hub", "evaluate"], help=argparse.SUPPRESS)
    parser.add_argument("--no-catch-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "generate":
        print(json.dumps(generate(args.root, args.k, args.per_shard)))
        return
    if args.step == "fill":
        print(json.dumps(fill(args.root, args.k, args.per_shard)))
        return
    if args.step == "hub":
        if args.code:
            _use_code(args.code)
        print(json.dumps(hub_step(args.root, args.k, catch_up=not args.no_catch_up)))
        return
    if args.step == "evaluate":
        print(json.dumps(evaluate(args.root, args.k, args.sample)))
        return
    if args.report:
        print(report(args.out))
        return
    out = Path(args.out)
    done = len(out.read_text().splitlines()) if out.exists() else 0
    common = ["--root", args.root, "--per-shard", str(args.per_shard), "--out", args.out]
    prior, filled = 0, False
    for line in out.read_text().splitlines() if out.exists() else []:
        prior += json.loads(line)["counts"]["kept"]
        filled = filled or bool(json.loads(line).get("filled"))
    for k in range(done, args.shards):
        if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
            print(f"stopped before shard {k}: it is past {args.until} UTC", flush=True)
            break
        if args.fill_from is not None and k >= args.fill_from and prior < args.fill_personas:
            filled = True
            row = {"shard": k, "prior_kept": prior, **_child([*common, "--step", "fill", "--k", str(k)], None)}
            prior += row["counts"]["kept"]
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            continue
        _child([*common, "--step", "generate", "--k", str(k)], None)
        hub_args = ["--step", "hub", "--k", str(k), *(["--no-catch-up"] if filled else [])]
        row = {"shard": k, "prior_kept": prior, **_child([*common, *hub_args], args.code)}
        if k and k % args.eval_every == 0:
            row.update(_child([*common, "--step", "evaluate", "--k", str(k), "--sample", str(args.sample)], None))
        row.update(date=str(date.today()), machine=f"{platform.machine()}, {os.cpu_count()} cores")
        prior += row["counts"]["kept"]
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
