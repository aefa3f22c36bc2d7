"""Embedding throughput, and the model2vec duplicate threshold that agrees with MiniLM at 0.9.

Builds persona-style descriptions from slots (occupation, situation, interest, place), and pairs of four kinds:
exact copies, light rewrites (clause order, synonyms, articles), one-slot changes, and unrelated pairs. Encodes
everything with MiniLM (sentence-transformers) and with the model2vec static model distilled from it, labels a pair
a duplicate when MiniLM's cosine >= 0.9 (the paper's setting), and finds the model2vec cosine threshold whose
decisions agree best with those labels (F1). Also reports sentences/s of both on persona-length texts.

    .venv/bin/python bench/embedding_thresholds.py
"""

import platform
import random
import tempfile
import time
from datetime import date

import numpy as np

from persona_hub_dagster.lib.embeddings import Embedder

OCCUPATIONS = [
    "pediatric nurse",
    "high-school chemistry teacher",
    "long-haul truck driver",
    "tax accountant",
    "marine biologist",
    "freelance illustrator",
    "retired police officer",
    "dairy farmer",
    "software engineer",
    "museum curator",
    "restaurant line cook",
    "civil rights lawyer",
    "air traffic controller",
    "yoga instructor",
    "bus mechanic",
    "wedding photographer",
]
SITUATIONS = [
    "who works night shifts",
    "who recently moved to a new city",
    "who is close to retirement",
    "who is raising two teenagers alone",
    "who is studying for a certification exam",
    "who volunteers at a food bank on weekends",
    "who just started a small business",
]
INTERESTS = [
    "amateur astronomy",
    "competitive chess",
    "restoring vintage motorcycles",
    "birdwatching",
    "sourdough baking",
    "speedrunning video games",
    "local history",
    "marathon running",
]
PLACES = ["in a coastal town", "in a large city", "in a farming village", "near a university campus"]
SYNONYMS = {
    "who works": "working",
    "recently moved": "has just moved",
    "is close to": "is nearing",
    "in a large city": "in a big city",
    "amateur astronomy": "stargazing as a hobby",
    "competitive chess": "tournament chess",
    "in a coastal town": "in a seaside town",
}


def persona(o, s, i, p) -> str:
    return f"A {o} {s}, living {p}, with a passion for {i}."


def rewrite(text: str, rng: random.Random) -> str:
    for old, new in SYNONYMS.items():
        if old in text and rng.random() < 0.7:
            text = text.replace(old, new)
    return text.replace("with a passion for", rng.choice(["who loves", "passionate about", "with a passion for"]))


def pairs(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    out = []
    for _ in range(n):
        slots = [rng.choice(OCCUPATIONS), rng.choice(SITUATIONS), rng.choice(INTERESTS), rng.choice(PLACES)]
        base = persona(*slots)
        kind = rng.choice(["copy", "rewrite", "one_slot", "unrelated"])
        if kind == "copy":
            other = base
        elif kind == "rewrite":
            other = rewrite(base, rng)
        elif kind == "one_slot":
            changed = list(slots)
            k = rng.randrange(4)
            pool = [OCCUPATIONS, SITUATIONS, INTERESTS, PLACES][k]
            changed[k] = rng.choice([x for x in pool if x != slots[k]])
            other = persona(*changed)
        else:
            other = persona(rng.choice(OCCUPATIONS), rng.choice(SITUATIONS), rng.choice(INTERESTS), rng.choice(PLACES))
        out.append((kind, base, other))
    return out


def cosines(embedder: Embedder, pairs_) -> tuple[np.ndarray, float]:
    texts = [a for _, a, _ in pairs_] + [b for _, _, b in pairs_]
    began = time.perf_counter()
    vectors = embedder.encode(texts)
    rate = len(texts) / (time.perf_counter() - began)
    n = len(pairs_)
    return np.einsum("ij,ij->i", vectors[:n], vectors[n:]), rate


def main() -> None:
    rng = random.Random(0)
    data = pairs(3000, rng)
    minilm = Embedder()
    with tempfile.TemporaryDirectory() as tmp:
        fast = Embedder(fast=True, static_cache_root=tmp)
        cos_minilm, rate_minilm = cosines(minilm, data)
        cos_fast, rate_fast = cosines(fast, data)

    labels = cos_minilm >= 0.9
    best = max(
        ((t, _f1(labels, cos_fast >= t)) for t in np.arange(0.70, 0.995, 0.005)),
        key=lambda item: item[1],
    )
    print(f"## Embedding thresholds, {date.today()}, {platform.node()} ({platform.machine()})")
    print(
        f"{len(data)} persona pairs; MiniLM {rate_minilm:.0f} sentences/s (batch {minilm.batch_size}), "
        f"model2vec {rate_fast:.0f} sentences/s"
    )
    print("| pair kind | pairs | MiniLM cosine (median) | model2vec cosine (median) | MiniLM >= 0.9 |")
    print("|---|---:|---:|---:|---:|")
    kinds = np.array([k for k, _, _ in data])
    for kind in ["copy", "rewrite", "one_slot", "unrelated"]:
        mask = kinds == kind
        print(
            f"| {kind} | {mask.sum()} | {np.median(cos_minilm[mask]):.3f} | {np.median(cos_fast[mask]):.3f} | "
            f"{labels[mask].mean():.2f} |"
        )
    print(
        f"model2vec threshold agreeing best with MiniLM >= 0.9: {best[0]:.3f} (F1 {best[1]:.3f}); "
        f"at 0.9 itself: F1 {_f1(labels, cos_fast >= 0.9):.3f}"
    )


def _f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((truth & predicted).sum())
    precision = tp / max(predicted.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)


if __name__ == "__main__":
    main()
