"""Quality rules: each reason, personas in every language that must pass (the failure classes of issue 20), the
prompt frame stripped, and the error rates on the labelled multilingual set."""

import csv
from collections import Counter
from pathlib import Path

import pytest

from persona_hub_dagster.lib.dedup.filters import MAX_WORDS, REASONS, quality_filter, strip_prompt_frame
from persona_hub_dagster.lib.dedup.hub import Decisions, quality_pass

LABELLED = Path(__file__).parent / "data" / "multilingual_personas.tsv"


def labelled_rows() -> list[dict]:
    with LABELLED.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize(
    ("persona", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("Chess coach.", "too_short"),
        ("教师", "too_short"),
        ("ครู", "too_short"),
        ("An avid " + "very " * MAX_WORDS + "keen gardener.", "too_long"),
        ("一位" + "非常" * 200 + "认真的老师。", "too_long"),
        ("I'm sorry, but I cannot create a persona for that text.", "refusal"),
        ("As an AI language model, I do not have personal opinions about gardening.", "refusal"),
        ("抱歉，我无法根据这段文字描述一个人物。", "refusal"),
        ("Lo siento, no puedo describir una persona a partir de este texto.", "refusal"),
        ('{"persona": "a baker who wakes at four every morning"}', "template_echo"),
        ("Text: <<< a nurse on night shifts >>> is the reader", "template_echo"),
        (
            "Fan 🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉 of 🚀🚀🚀🚀🚀🚀🚀🚀 space 💫💫💫💫💫💫💫 travel ⭐⭐⭐⭐⭐⭐⭐",
            "mostly_non_letters",
        ),
        ("A teacher teacher teacher teacher teacher teacher who teaches teacher teacher", "repetitive"),
        ("A nurse who works nights who works nights who works nights at the clinic", "repetitive"),
        ("我喜欢我喜欢我喜欢我喜欢我喜欢我喜欢我喜欢我喜欢我喜欢", "repetitive"),
        # Truncated sentences, in each language's way of leaving a sentence open.
        ("The person is a self-proclaimed", "truncated"),
        ("A retired schoolteacher who spends her weekends volunteering at the", "truncated"),
        ("A young software developer who loves hiking, cooking,", "truncated"),
        ("Eine engagierte Lehrerin, die sich für die", "truncated"),
        ("Un profesor de química apasionado por la enseñanza de", "truncated"),
        ("一位热爱摄影的退休工程师，研究城市的", "truncated"),
        ("東京で働くソフトウェアエンジニアで、休日は", "truncated"),
        # A name is not a persona.
        ("Mlle. Anne Marie Bélanger", "bare_name"),
        ("Dr. Rajesh Kumar Sharma", "bare_name"),
        # What the text describes instead of a person.
        ("A delicious chocolate cake recipe with fresh strawberries.", "food_or_recipe"),
        ("Preheat the oven to 180 degrees, add two tablespoons of butter and bake for 25 minutes.", "food_or_recipe"),
        ("Una receta tradicional de paella valenciana con conejo y judías verdes.", "food_or_recipe"),
        ("一道经典的川菜，用豆瓣酱和花椒烹制而成。", "food_or_recipe"),
        ("The Eiffel Tower, a wrought-iron lattice tower in Paris.", "place"),
        ("Eine kleine Stadt an der Nordsee, bekannt für ihren Hafen.", "place"),
        ("一座位于长江边的古镇，以石板街和吊脚楼闻名。", "place"),
        ("A jazz festival held every summer on the waterfront.", "event"),
        ("一场在成都举办的国际美食节，吸引了数十万游客。", "event"),
        ("A lightweight laptop with a 14-inch screen and twelve hours of battery life.", "product_or_work"),
        ("A mystery novel set in a snowbound Swiss monastery.", "product_or_work"),
        ("一款轻薄的笔记本电脑，续航长达十二小时，适合商务出差。", "product_or_work"),
    ],
)
def test_each_reason(persona, reason):
    assert reason in REASONS
    assert quality_filter([persona]) == [reason]


@pytest.mark.parametrize(
    "persona",
    [
        # Head nouns no person-word list holds (issue 20: all dropped as not_a_person before).
        "An eccentric millionaire with an extensive collection of historical encryption devices",
        "A 30-year-old freelance film critic who's extremely fond of unity in diversity.",
        "A representative from the Ministry of Education, advocating for free school meals.",
        "A skeptic about the cryptocurrency hype who reads every white paper.",
        "A fanatic of carousels",
        "a newbie to the MacOS and Dropbox",
        "A curator preparing an exhibition on Bronze Age jewellery.",
        # Words of things, as a persona's modifiers, not its head.
        "A restaurant owner in Naples who sources tomatoes from his cousin's farm.",
        "A wedding photographer who shoots only on medium-format film.",
        "A data engineer who designs JSON schemas for public transport APIs.",
        "A C++ developer who writes firmware for hearing aids.",
        # A sentence may end on a preposition or a pronoun.
        "A person who cares deeply about the causes she believes in.",
        "A mentor who inspired her.",
        "A retired sailor who collects stamps from former colonies.",
        "Someone who enjoys long walks and quiet evenings with a good novel.",
        # Scripts without spaces: a sentence is not one word (all too_short before).
        "一位对自动驾驶颇有见解的经济学者",
        "一个喜欢用Python做数据分析的大学生，正在研究城市空气质量。",
        "京都で老舗の和菓子屋を継いだ三代目の職人。",
        "นักออกแบบไอคอนสำหรับแอปพลิเคชันมือถือที่ชอบสะสมของเล่นไม้โบราณ",
        # Letters with combining marks are letters.
        "एक सेवानिवृत्त शिक्षिका जो गाँव के बच्चों को मुफ़्त में गणित पढ़ाती हैं।",
        "معلمة رياضيات في عمّان تحب تصميم الألغاز لطلابها.",
        "Una enfermera que trabaja de noche en un hospital infantil.",
        "Ein Buchliebhaber, der ein kleines Antiquariat in Weimar betreibt.",
    ],
)
def test_real_personas_pass(persona):
    assert quality_filter([persona]) == [None]


@pytest.mark.parametrize(
    ("framed", "persona"),
    [
        (
            "The person who is likely to dislike the text above is a software engineer who thinks agile ceremonies "
            "waste time.",
            "A software engineer who thinks agile ceremonies waste time.",
        ),
        ("Persona: a baker who wakes at four every morning.", "A baker who wakes at four every morning."),
        (
            "Who is likely to read the text above? A marine engineer interested in hydrogen ferries.",
            "A marine engineer interested in hydrogen ferries.",
        ),
        ('"A jazz drummer who teaches rhythm to children."', "A jazz drummer who teaches rhythm to children."),
        ("最可能不喜欢上面文字的人是一位坚持传统出版的老编辑。", "一位坚持传统出版的老编辑。"),
        (
            "Die Person, die den obigen Text am ehesten lesen würde, ist eine Lehrerin für Geschichte.",
            "Eine Lehrerin für Geschichte.",
        ),
    ],
)
def test_a_prompt_frame_is_stripped_and_the_persona_kept(framed, persona):
    assert strip_prompt_frame(framed) == persona
    assert quality_filter([strip_prompt_frame(framed)]) == [None]


def test_the_hub_keeps_the_stripped_persona_and_records_the_edit():
    texts = ["The persona is a nurse who works nights in Leeds.", "A nurse who works nights in Leeds.", "Teacher."]
    decisions = Decisions.start(["a", "b", "c"])
    assert quality_pass(texts, decisions) == ["A nurse who works nights in Leeds."] * 2 + ["Teacher."]
    assert decisions.quality_edit == ["prompt_frame", None, None]
    assert decisions.reason == [None, None, "quality:too_short"]
    assert decisions.counts() == {"candidates": 3, "kept": 2, "quality:too_short": 1, "quality_edit:prompt_frame": 1}


def test_error_rates_on_the_labelled_multilingual_set():
    """Issue 20's target: at most 0.5% of real personas dropped; every framed persona kept with its frame stripped;
    non-personas caught in every language the rules read (Japanese things are the known gap, bench/RESULTS.md)."""
    rows = labelled_rows()
    texts = [strip_prompt_frame(r["text"]) for r in rows]
    reasons = quality_filter(texts)
    personas = [(r, t, why) for r, t, why in zip(rows, texts, reasons, strict=True) if r["label"] == "persona"]
    false_drops = [(r["id"], why) for r, _, why in personas if why is not None]
    assert len(personas) > 350 and len(false_drops) <= 0.005 * len(personas), false_drops
    assert all(t != r["text"] for r, t, _ in personas if r["kind"] == "prompt_frame")
    false_keeps = Counter(
        r["lang"] for r, why in zip(rows, reasons, strict=True) if r["label"] != "persona" and not why
    )
    assert set(false_keeps) <= {"ja"}, false_keeps
