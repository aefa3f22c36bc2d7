"""A synthetic persona corpus with planted near-duplicates, for the dedup benchmark and tests.

Base personas are assembled from independent slots (occupation, situation, place, interest, trait, detail) so that
distinct bases rarely look alike; a share of them gets near-duplicates planted right after or far after them:
exact copies, shuffled word order, one word inserted / deleted / substituted, and paraphrases (several synonym
swaps). Deterministic for a seed.
"""

import random

OCCUPATIONS = [
    "pediatric nurse",
    "chemistry teacher",
    "truck driver",
    "tax accountant",
    "marine biologist",
    "illustrator",
    "police officer",
    "dairy farmer",
    "software engineer",
    "museum curator",
    "line cook",
    "civil rights lawyer",
    "air traffic controller",
    "yoga instructor",
    "bus mechanic",
    "wedding photographer",
    "librarian",
    "electrician",
    "pharmacist",
    "carpenter",
    "data analyst",
    "social worker",
    "beekeeper",
    "firefighter",
    "translator",
    "pilot",
    "dentist",
    "barista",
    "architect",
    "journalist",
    "veterinarian",
    "plumber",
    "midwife",
    "tailor",
    "surveyor",
    "geologist",
    "locksmith",
    "sommelier",
    "paramedic",
    "crane operator",
    "actuary",
    "archivist",
    "glassblower",
]
SITUATIONS = [
    "who works night shifts",
    "who recently moved abroad",
    "close to retirement",
    "raising two teenagers alone",
    "studying for a licensing exam",
    "who volunteers at a food bank",
    "who just opened a small business",
    "recovering from a knee injury",
    "caring for an elderly parent",
    "working two part-time jobs",
    "who was recently promoted",
    "returning to work after a long break",
    "who commutes three hours a day",
]
PLACES = [
    "in a coastal town",
    "in a large city",
    "in a farming village",
    "near a university campus",
    "in the mountains",
    "on a small island",
    "in a suburb",
    "in a border town",
    "in a former mining town",
    "by a busy port",
]
INTERESTS = [
    "amateur astronomy",
    "competitive chess",
    "vintage motorcycles",
    "birdwatching",
    "sourdough baking",
    "speedrunning video games",
    "local history",
    "marathon running",
    "jazz piano",
    "urban gardening",
    "model railways",
    "open-source software",
    "medieval poetry",
    "woodworking",
    "trail cycling",
    "origami",
]
TRAITS = [
    "a meticulous planner",
    "a skeptic of new technology",
    "an early adopter",
    "a patient mentor",
    "an anxious perfectionist",
    "a cheerful optimist",
    "a blunt critic",
    "a careful saver",
    "a restless explorer",
]
DETAILS = [
    "keeps detailed notebooks",
    "reads every manual twice",
    "writes a small newsletter",
    "hosts weekly dinners",
    "collects old maps",
    "coaches a youth team",
    "records a podcast",
    "restores old radios",
    "learns languages",
    "sketches strangers on trains",
    "grows chili peppers",
    "repairs bicycles for neighbours",
]
SYNONYMS = {
    "works": "labours",
    "recently": "lately",
    "large": "big",
    "small": "little",
    "village": "hamlet",
    "competitive": "tournament",
    "keeps": "maintains",
    "writes": "publishes",
    "collects": "gathers",
    "old": "antique",
    "busy": "bustling",
    "careful": "prudent",
    "weekly": "regular",
    "detailed": "thorough",
}
FILLER = ["really", "quite", "also", "often", "very", "deeply", "still", "always"]
SYLLABLES = [
    "ka",
    "lo",
    "mer",
    "vin",
    "tas",
    "ro",
    "bel",
    "dun",
    "xi",
    "per",
    "gal",
    "sor",
    "ne",
    "mi",
    "tor",
    "lan",
    "qua",
    "zer",
    "fi",
    "hol",
    "bra",
    "cen",
    "dor",
    "el",
    "wyn",
    "ost",
    "rik",
    "sa",
    "thu",
    "vel",
]


def pseudo_word(rng: random.Random) -> str:
    """A made-up name: like the names, places and niche topics real personas mention, it makes most texts carry a
    few rare words, as real persona corpora do (templates alone would make every word common)."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 4)))


def base_persona(rng: random.Random) -> str:
    return (
        f"{pseudo_word(rng).title()}, a {rng.choice(OCCUPATIONS)} {rng.choice(SITUATIONS)}, living "
        f"{rng.choice(PLACES)} near {pseudo_word(rng).title()}, passionate about {rng.choice(INTERESTS)} and "
        f"{rng.choice(INTERESTS)}; {rng.choice(TRAITS)} who {rng.choice(DETAILS)} and {rng.choice(DETAILS)}."
    )


def variant(text: str, kind: str, rng: random.Random) -> str:
    words = text.split()
    if kind == "copy":
        return text
    if kind == "shuffle":
        rng.shuffle(words)
        return " ".join(words)
    if kind == "insert":
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLER))
    elif kind == "delete":
        del words[rng.randrange(len(words))]
    elif kind == "substitute":
        words[rng.randrange(len(words))] = rng.choice(FILLER + ["robust", "gentle", "rural"])
    elif kind == "paraphrase":
        words = [SYNONYMS.get(w, w) if rng.random() < 0.6 else w for w in words]
    return " ".join(words)


VARIANT_KINDS = ("copy", "shuffle", "insert", "delete", "substitute", "paraphrase")


def persona_corpus(n: int, *, duplicate_share: float = 0.3, seed: int = 0) -> tuple[list[str], list[int]]:
    """(texts, origin): origin[i] is the index of the base persona text i was planted from (itself for bases)."""
    rng = random.Random(seed)
    texts: list[str] = []
    origin: list[int] = []
    while len(texts) < n:
        if texts and rng.random() < duplicate_share:
            source = origin[rng.randrange(len(texts))]
            texts.append(variant(texts[source], rng.choice(VARIANT_KINDS), rng))
            origin.append(source)
        else:
            origin.append(len(texts))
            texts.append(base_persona(rng))
    return texts, origin
