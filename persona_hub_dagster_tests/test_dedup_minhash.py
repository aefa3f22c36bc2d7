"""MinHash dedup: datasketch-identical signatures, band choice, exact verification, contract, recall, and units that
fit the script (issue 20: a Chinese sentence was one or two regex "words": no edit of it was ever a near-duplicate)."""

import csv
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash

from persona_hub_dagster.lib.dedup import scripts
from persona_hub_dagster.lib.dedup.minhash import (
    ESTIMATE_MARGIN,
    choose_bands,
    cluster_tokenized,
    estimated_jaccard,
    exact_jaccard,
    minhash_clusters,
    signatures,
    sketch_jaccard,
    sketches,
    tokenize,
    tokenize_batch,
)
from persona_hub_dagster_tests.helpers.exact_jaccard import exact_similar_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from persona_corpus import persona_corpus  # noqa: E402


def minhash_dedup(texts, **settings) -> list[int]:
    """For each text, the index of the earlier kept text it duplicates, or its own index."""
    return minhash_clusters(texts, **settings).representative.tolist()


PERSONA = (
    "A retired marine engineer living in a small coastal town who restores wooden sailboats, writes a monthly "
    "newsletter for the local maritime museum and teaches knot tying to children on Saturdays"
)


CHINESE = "一位对自动驾驶颇有见解的经济学者，关注城市交通政策"
THAI = "นักพัฒนาเว็บไซต์อิสระที่หลงใหลในการออกแบบหน้าเว็บให้เข้าถึงได้สำหรับผู้พิการทางสายตา"
JAPANESE = "東京のIT企業に勤めるソフトウェアエンジニアで、オープンソースに貢献している。"


def jaccard(a: str, b: str) -> float:
    x, y = tokenize(a), tokenize(b)
    return len(x & y) / len(x | y) if x | y else 1.0


@pytest.mark.parametrize("seed", [1, 7])
def test_signatures_are_identical_to_datasketch(seed):
    texts = [PERSONA, "Ünïcode wörds, émigré café — naïve résumé", "", "one", "x " * 500, "A B a b 123 _x"]
    texts += [CHINESE, THAI, JAPANESE, "用Python做数据分析的大学生", "एक सेवानिवृत्त शिक्षिका जो गाँव के बच्चों को"]
    sigs = signatures(tokenize_batch(texts), num_perm=64, seed=seed)
    for text, sig in zip(texts, sigs, strict=True):
        reference = MinHash(num_perm=64, seed=seed)
        reference.update_batch([t.encode("utf-8") for t in tokenize(text)])
        assert np.array_equal(reference.hashvalues, sig), text


def test_bands_catch_pairs_at_the_threshold():
    bands, rows = choose_bands(0.9, 128, min_recall=0.95)
    assert (bands, rows) == (10, 12) and 1 - (1 - 0.9**rows) ** bands >= 0.95
    assert choose_bands(0.9, 128, min_recall=0.99) == (12, 10)
    # datasketch's automatic choice for 0.9 (5 bands x 25 rows) finds a pair at exactly 0.9 a third of the time.
    assert 1 - (1 - 0.9**25) ** 5 == pytest.approx(0.31, abs=0.01)
    bands, rows = choose_bands(0.5, 128)
    assert 1 - (1 - 0.5**rows) ** bands >= 0.95


def test_the_contract_earliest_kept_text_or_itself():
    words = PERSONA.split()
    inserted = " ".join(words[:5] + ["gladly"] + words[5:])
    shuffled = " ".join(reversed(words))
    texts = [PERSONA, "A pediatric nurse who works nights in a busy hospital.", inserted, PERSONA.upper(), shuffled]
    assert jaccard(PERSONA, inserted) >= 0.9
    assert minhash_dedup(texts) == [0, 1, 0, 0, 0]


def test_a_pair_just_below_the_threshold_is_never_merged():
    base = [f"w{i}" for i in range(40)]
    below = " ".join(base[:36] + ["x1", "x2", "x3"])  # 36 shared of 43: J = 0.837
    at = " ".join(base[:39] + ["x1"])  # 39 shared of 41: J = 0.951
    assert minhash_dedup([" ".join(base), below, at]) == [0, 1, 0]


def test_keep_first_never_drops_for_a_chain_unlike_connected_components():
    base = [f"w{i}" for i in range(60)]
    a = " ".join(base)
    b = " ".join(base[:57] + ["y1", "y2", "y3"])  # J(a, b) = 57/63 = 0.905
    c = " ".join(base[:54] + ["y1", "y2", "y3", "z1", "z2", "z3"])  # J(b, c) = 57/63, J(a, c) = 54/66 = 0.82
    assert jaccard(a, c) < 0.9 <= min(jaccard(a, b), jaccard(b, c))
    keep_first = minhash_clusters([a, b, c]).representative.tolist()
    components = minhash_clusters([a, b, c], clustering="connected_components").representative.tolist()
    assert keep_first == [0, 0, 2]  # c is kept: its only duplicate, b, was dropped
    assert components == [0, 0, 0]  # c is dropped for a, which it is not similar to


def test_exact_copies_and_empty_texts():
    texts = ["", PERSONA, "", "!!!", PERSONA]
    assert minhash_dedup(texts) == [0, 1, 0, 0, 1]  # no tokens at all: identical (empty) sets


def test_word_ngrams():
    a = "the cat sat on the mat with the hat"
    assert minhash_dedup([a, "the mat sat on the cat with the hat"]) == [0, 0]  # same 1-gram set
    assert minhash_dedup([a, "the mat sat on the cat with the hat"], ngram=2) == [0, 1]


def test_exact_join_matches_brute_force():
    rng = random.Random(3)
    words = [f"w{i}" for i in range(25)]
    texts = [" ".join(rng.sample(words, rng.randint(0, 10))) for _ in range(300)]
    texts += [t + " w3" for t in texts[:80]]
    batch = tokenize_batch(texts)
    sets = [tokenize(t) for t in texts]
    for threshold in (0.5, 0.8, 0.9):
        brute = {
            (i, j)
            for i, j in itertools.combinations(range(len(texts)), 2)
            if (len(sets[i] & sets[j]) / len(sets[i] | sets[j]) if sets[i] | sets[j] else 1.0) >= threshold
        }
        assert set(map(tuple, exact_similar_pairs(batch, threshold).tolist())) == brute


def test_vectorized_exact_jaccard():
    texts = [PERSONA, PERSONA + " extra words here", "", "", "alpha beta"]
    batch = tokenize_batch(texts)
    pairs = np.array([[0, 1], [2, 3], [0, 4], [1, 1]])
    expected = [jaccard(texts[i], texts[j]) for i, j in pairs]
    assert np.allclose(exact_jaccard(batch, batch, pairs), expected)


def test_recall_and_precision_against_exact_jaccard():
    texts, _ = persona_corpus(6000, seed=5)
    batch = tokenize_batch(texts)
    truth = exact_similar_pairs(batch, 0.9)
    result = cluster_tokenized(batch)
    rep = result.representative
    kept = rep == np.arange(len(texts))
    # Recall: a true duplicate pair never survives with both members kept.
    both_kept = (kept[truth[:, 0]] & kept[truth[:, 1]]).mean()
    assert len(truth) > 1000 and both_kept <= 0.001
    # Precision: every dropped text really is >= 0.9 similar to its representative.
    dropped = np.flatnonzero(~kept)
    assert (exact_jaccard(batch, batch, np.stack((rep[dropped], dropped), axis=1)) >= 0.9).all()


def test_sketches_estimate_jaccard_as_well_as_the_signatures_they_come_from():
    """The hub index keeps a byte of each signature value: its estimate must be as good as the full signature's,
    so that the cross-shard margin is the within-shard one. Pairs of every similarity, in several scripts."""
    rng = random.Random(3)
    bases = persona_corpus(300, seed=9)[0] + [PERSONA, CHINESE, THAI, JAPANESE]
    texts, pairs = [], []
    for base in bases:
        words = base.split() if " " in base else list(base)
        edited = list(words)
        for _ in range(rng.randrange(0, max(2, len(words) // 2))):
            edited[rng.randrange(len(edited))] = rng.choice(["river", "中", "ไทย", "Stadt", "year"])
        joiner = " " if " " in base else ""
        pairs.append((len(texts), len(texts) + 1))
        texts += [base, joiner.join(edited)]
    batch, pairs = tokenize_batch(texts), np.array(pairs)
    exact = exact_jaccard(batch, batch, pairs)
    sigs = signatures(batch)
    full = estimated_jaccard(sigs, pairs)
    small = sketch_jaccard(sketches(sigs)[pairs[:, 0]], sketches(sigs)[pairs[:, 1]])
    assert sketches(sigs).nbytes * 4 == sigs.nbytes
    assert exact.min() < 0.5 and (exact >= 0.9).sum() > 30  # the pairs span the range the hub decides in
    assert (small[exact >= 0.9] >= 0.9 - ESTIMATE_MARGIN).all()  # no duplicate is lost to the estimate
    assert abs(np.abs(small - exact).mean() - np.abs(full - exact).mean()) < 0.005
    assert np.abs(small - full).max() <= 4 / 128  # at most a few chance agreements of low bytes


def test_units_fit_the_script():
    assert scripts.units("A 30-year-old film critic") == ["a", "30", "year", "old", "film", "critic"]
    assert scripts.units("用Python做数据分析") == ["用", "python", "做", "数", "据", "分", "析"]
    assert scripts.units("นักพัฒนา") == ["นั", "ัก", "กพ", "พั", "ัฒ", "ฒน", "นา"]  # letter pairs
    assert scripts.units("東京のソフト") == ["東", "京", "のソ", "ソフ", "フト"]  # kanji alone, kana in pairs
    assert scripts.units("हिंदी में") == ["हिंदी", "में"]  # vowel signs stay in their word
    assert len(tokenize(CHINESE)) > 20  # was 2 "words"


@pytest.mark.parametrize(
    ("text", "copy"),
    [
        (CHINESE, "一位对自动驾驶颇有见解的经济学家，关注城市交通政策"),  # one character changed
        (CHINESE, "一位对自动驾驶颇有见解的经济学者。关注城市交通政策！"),  # punctuation changed
        (THAI, THAI.replace("อิสระ", "อิสรา")),
        (JAPANESE, JAPANESE.replace("東京", "東亰")),
        (JAPANESE, JAPANESE.replace("、", " ").replace("。", "")),
    ],
)
def test_an_edit_of_a_character_or_of_punctuation_is_a_near_duplicate_in_scripts_without_spaces(text, copy):
    assert text != copy and jaccard(text, copy) >= 0.9
    assert minhash_dedup([text, copy]) == [0, 0]


def test_distinct_personas_of_every_script_are_never_merged():
    with (Path(__file__).parent / "data" / "multilingual_personas.tsv").open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r["kind"] == "persona"]
    assert {r["lang"] for r in rows} == {"en", "zh", "ja", "th", "de", "es", "ar", "hi"}
    representative = minhash_dedup([r["text"] for r in rows])
    assert representative == list(range(len(rows)))
