"""A persona hub with planted kinds of people in skewed proportions (some kinds 10x as frequent as others), in
English, German, Chinese and Thai: test_coverage and bench/persona_coverage.py. Each persona is a sentence built from
its kind's roles, places and interests, with a city, an age and a pastime any kind may have, so that personas of one
kind differ (none is a near-duplicate of another) but read alike."""

from __future__ import annotations

import random

CITIES = [
    "Lisbon", "Osaka", "Nairobi", "Toronto", "Lima", "Krakow", "Austin", "Manila", "Glasgow", "Hanoi",
    "Adelaide", "Porto Alegre", "Accra", "Bergen", "Tucson", "Lyon", "Pune", "Halifax", "Cusco", "Tbilisi",
]  # fmt: skip
AGES = ["young", "middle-aged", "semi-retired", "recently graduated", "veteran", "second-career"]
PASTIMES = [
    "plays chess on weekends", "keeps a vegetable garden", "sings in a community choir", "restores old bicycles",
    "writes short stories", "runs half marathons", "collects vinyl records", "volunteers at an animal shelter",
    "learns Portuguese in the evenings", "paints watercolours of the harbour", "coaches a youth football team",
    "reads history books", "bakes sourdough bread", "hikes mountain trails", "builds model trains",
    "plays the cello in an amateur orchestra", "follows Formula 1 closely", "goes birdwatching at dawn",
    "organizes neighbourhood cleanups", "brews kombucha at home",
]  # fmt: skip

# What people of a kind care about besides their work (one of these and one of PASTIMES in each persona: a kind is
# its role, workplace and interests, as in real personas, and shares the city, age and some pastimes with the rest).
INTERESTS = {
    "software": ["contributes to open-source compilers", "writes a blog about distributed databases",
                 "mentors junior developers online", "builds home automation with a Raspberry Pi",
                 "follows programming language research", "speaks at cloud computing meetups"],
    "retail": ["tracks which products sell best each season", "trains new cashiers on the till",
               "plans the shop window displays", "handles customer complaints with patience",
               "counts inventory on Sunday mornings", "negotiates discounts with suppliers"],
    "healthcare": ["reads journals on infectious disease", "volunteers at a free vaccination clinic",
                   "teaches first aid to teenagers", "studies for a critical care certification",
                   "worries about staff shortages on night shifts", "campaigns for better patient safety"],
    "crafts": ["sharpens chisels and hand planes", "sells handmade pieces at a craft fair",
               "teaches apprentices traditional joinery", "collects antique tools",
               "restores old furniture for neighbours", "experiments with natural wood finishes"],
    "farming": ["watches the weather for the harvest", "breeds hardy heritage livestock",
                "sells produce at the farmers market", "experiments with crop rotation",
                "repairs tractors in the barn", "worries about drought and soil erosion"],
    "german_law": ["liest jeden Morgen die neuesten Urteile", "berät ehrenamtlich Mieter",
                   "schreibt Fachartikel zum Vertragsrecht", "bereitet Referendare auf das Examen vor",
                   "verhandelt Vergleiche mit Versicherungen", "interessiert sich für Datenschutzrecht"],
}  # fmt: skip

# kind -> (relative frequency, roles, workplaces): two common kinds, five rare ones.
KINDS: dict[str, tuple[int, list[str], list[str]]] = {
    "software": (
        10,
        [
            "backend software engineer",
            "data engineer",
            "mobile app developer",
            "site reliability engineer",
            "frontend developer",
            "machine learning engineer",
        ],
        [
            "a fintech startup",
            "a cloud hosting company",
            "a video game studio",
            "an e-commerce platform",
            "a logistics software firm",
            "an open-source foundation",
        ],
    ),
    "retail": (
        10,
        [
            "supermarket cashier",
            "shoe store manager",
            "bookshop assistant",
            "electronics sales clerk",
            "clothing boutique owner",
            "hardware store clerk",
        ],
        [
            "a busy shopping mall",
            "a family-run corner shop",
            "a department store",
            "an outlet centre",
            "a chain pharmacy counter",
            "a street market stall",
        ],
    ),
    "healthcare": (
        1,
        [
            "pediatric nurse",
            "emergency room physician",
            "hospice nurse",
            "paramedic",
            "midwife",
            "intensive care nurse",
        ],
        [
            "a children's hospital",
            "a rural clinic",
            "a trauma centre",
            "an ambulance service",
            "a maternity ward",
            "a cancer hospital",
        ],
    ),
    "crafts": (
        1,
        ["furniture carpenter", "blacksmith", "potter", "violin maker", "stonemason", "boat builder"],
        [
            "a small woodworking shop",
            "a village forge",
            "a ceramics studio",
            "a workshop behind the house",
            "a cathedral restoration site",
            "a harbour boatyard",
        ],
    ),
    "farming": (
        1,
        ["dairy farmer", "beekeeper", "organic vegetable grower", "sheep rancher", "vineyard owner", "rice farmer"],
        [
            "a hillside farm",
            "a cooperative of smallholders",
            "a family estate",
            "a valley ranch",
            "an agricultural collective",
            "terraced fields",
        ],
    ),
    "german_law": (
        1,
        [
            "Rechtsanwältin für Familienrecht",
            "Notar",
            "Richterin am Amtsgericht",
            "Steuerberater",
            "Fachanwalt für Arbeitsrecht",
            "Justiziarin",
        ],
        [
            "einer kleinen Kanzlei",
            "einem Landgericht",
            "einer Wirtschaftsprüfungsgesellschaft",
            "einem Notariat",
            "einer Gewerkschaft",
            "einem mittelständischen Unternehmen",
        ],
    ),
}
CHINESE = [
    "一位在{city}中学教数学的老师，周末喜欢书法和太极拳。",
    "一名在{city}医院工作的护士，业余时间学习摄影。",
    "一位在{city}开小餐馆的厨师，擅长做川菜，喜欢研究新菜谱。",
    "一名在{city}读研究生的学生，研究人工智能，喜欢下围棋。",
]
THAI = [
    "ครูสอนภาษาอังกฤษในโรงเรียนประถมที่{city} ชอบปลูกต้นไม้และอ่านหนังสือ",
    "พยาบาลที่ทำงานในโรงพยาบาลชุมชนใน{city} ชอบทำอาหารไทยให้ครอบครัว",
    "ชาวประมงที่{city} ออกเรือหาปลาทุกเช้าและซ่อมอวนเอง",
    "นักศึกษาวิศวกรรมที่{city} สนใจหุ่นยนต์และเล่นดนตรีไทย",
]
THAI_CITIES = ["เชียงใหม่", "ขอนแก่น", "ภูเก็ต", "หาดใหญ่", "อุดรธานี", "นครราชสีมา"]
CHINESE_CITIES = ["成都", "杭州", "西安", "厦门", "昆明", "青岛"]


def persona_text(kind: str, rng: random.Random) -> str:
    if kind == "chinese":
        return rng.choice(CHINESE).format(city=rng.choice(CHINESE_CITIES))
    if kind == "thai":
        return rng.choice(THAI).format(city=rng.choice(THAI_CITIES))
    _, roles, places = KINDS[kind]
    role, place, city = rng.choice(roles), rng.choice(places), rng.choice(CITIES)
    interest = rng.choice(INTERESTS[kind])
    if kind == "german_law":
        adjective = rng.choice(["junge", "erfahrene", "engagierte"])
        return f"Eine {adjective} Person, {role} bei {place} in {city}, die {interest}."
    return f"A {rng.choice(AGES)} {role} at {place} in {city} who {interest} and {rng.choice(PASTIMES)}."


def planted_personas(n: int, seed: int = 0, *, scripts: int = 0) -> list[tuple[str, str]]:
    """(kind, persona) pairs: n personas of KINDS drawn by their frequencies, then `scripts` Chinese and `scripts`
    Thai ones; distinct texts."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    plan = rng.choices(kinds, weights, k=n * 3) + ["chinese"] * scripts * 8 + ["thai"] * scripts * 8
    wanted = {"chinese": scripts, "thai": scripts}
    latin = 0
    for kind in plan:
        if kind in wanted and wanted[kind] == 0 or kind not in wanted and latin >= n:
            continue
        text = persona_text(kind, rng)
        if text in seen:
            continue
        seen.add(text)
        out.append((kind, text))
        if kind in wanted:
            wanted[kind] -= 1
        else:
            latin += 1
    return out
