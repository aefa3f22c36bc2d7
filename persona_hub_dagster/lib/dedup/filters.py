"""Quality rules for persona descriptions: each rejects for one named reason, on evidence that the text is not a
persona, checked in this order. Anything without such evidence is kept: a persona's head noun is open-ended ("a
fanatic of carousels", "a skeptic about the cryptocurrency hype"), so no list of person words can admit them all.

- empty: nothing but whitespace.
- truncated: a sentence cut off. It ends on a word that needs a continuation ("a self-proclaimed", "el", "的",
  "を"), on a comma, colon, dash or ellipsis, or leaves a bracket open.
- too_short: under MIN_WORDS words, a role label rather than a persona ("Teacher."); continua scripts are counted
  in words (scripts.py), so a Chinese sentence is not one word.
- too_long: over MAX_WORDS words, a story or an essay rather than a description.
- refusal: the model declined or talked about itself ("I'm sorry", "As an AI language model", "抱歉", "Lo siento").
- template_echo: prompt scaffolding leaked into the output: JSON, our text markers, template braces.
- mostly_non_letters: under half of the visible characters are letters (with their marks): markup, numbers, emoji.
- repetitive: one word over a third of the words, a 3-word phrase 3+ times, or in continua scripts a run of 6
  characters 3+ times.
- bare_name: a name with an honorific and nothing else ("Mlle. Anne Marie Bélanger").
- food_or_recipe, place, event, product_or_work: the head noun names a dish, a place, an event or a product, an
  organization or a work ("A delicious chocolate cake recipe.", "The Eiffel Tower, ...", "一座...的古镇"), or the
  text reads as recipe steps.

The head noun is found in English, German and Spanish (the noun that ends the first noun phrase, or starts it in
Spanish) and by the measure word in Chinese (一款 a product, 一座 a place, 一场 an event, 一道 a dish); texts in
other languages are judged by the other rules only.

Before the rules, `strip_prompt_frame` removes a leftover frame of the Text-to-Persona prompt ("The person who is
likely to dislike the text above is a ...", "Persona: ...") and keeps the persona inside it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import polars as pl

from persona_hub_dagster.lib.dedup.scripts import CONTINUA, LETTER_WORD, length_frame

MIN_WORDS = 4
MAX_WORDS = 120

REASONS = (
    "empty",
    "truncated",
    "too_short",
    "too_long",
    "refusal",
    "template_echo",
    "mostly_non_letters",
    "repetitive",
    "bare_name",
    "food_or_recipe",
    "place",
    "event",
    "product_or_work",
)

_REFUSAL = (
    r"(?i)\b(i['’]m sorry|i am sorry|i apologi[sz]e|i can(?:no|['’])t|i am unable|i['’]m unable|as an ai\b|"
    r"as a (?:large )?language model|i do not have (?:personal|the ability)|i['’]m not able to|"
    r"lo siento|no puedo|como (?:un )?modelo de lenguaje|es tut mir leid|ich kann (?:keine|nicht)|als ki\b|"
    r"je suis désolé|en tant qu['’]ia)|抱歉|对不起|作为(?:一个)?(?:AI|人工智能|语言模型)|"
    r"申し訳(?:ありません|ございません)|AIとして|ขออภัย|عذرًا|عذرا|آسف|क्षमा करें|माफ़ कीजिए"
)
# Scaffolding, not content: a JSON object or a template placeholder, the text markers of our prompts, a label that
# names a field ("json", "schema" alone are fine: "a data engineer who designs JSON schemas" is a persona).
_TEMPLATE = r"(?i)^\s*[\[{]|\{\{|\}\}|<<<|>>>|</?(?:text|persona)>|\"persona\"\s*:|\btext\s*:|\banswer with\b"

# --- the prompt's frame -------------------------------------------------------------------------------------------
_WHO = r"(?:the|this|that|a|such a)\s+(?:person|persona|individual|reader|writer|author|user|one|people|someone)"
_LIKELY = r"(?:who|that)\s+(?:is|are|would be|might be)\s+(?:most\s+|very\s+)?likely\s+to\s+[^.?!]{1,80}?"
_TEXT = r"(?:the|this|that)\s+(?:text|passage|article|document|content|post|piece)(?:\s+(?:above|below))?"
_PROMPT_FRAMES = (
    # An echo of the question: "Who is likely to dislike the text above? ..."
    re.compile(r"^\s*who\s+(?:is|would be)\s+(?:most\s+)?likely\s+to\s+[^?]{1,120}\?\s*", re.IGNORECASE),
    # The answer's frame: "The person who is likely to dislike the text above is ..."
    re.compile(rf"^\s*{_WHO}\s+{_LIKELY}\s+{_TEXT}\s+(?:is|are|would be|might be|could be)\s*:?\s*", re.IGNORECASE),
    re.compile(rf"^\s*{_WHO}\s+(?:is|would be)\s*:?\s*(?=(?:a|an|the|someone)\b)", re.IGNORECASE),
    re.compile(r"^\s*(?:persona(?:\s+description)?|description|answer)\s*:\s*", re.IGNORECASE),
    re.compile(r"^\s*(?:la\s+persona|el\s+lector)\s+que\s+[^,.]{1,80}?\s+es\s+", re.IGNORECASE),
    re.compile(r"^\s*die\s+person,\s+die\s+[^,.]{1,80}?,\s+ist\s+", re.IGNORECASE),
    re.compile(
        r"^\s*(?:最?可能|很可能)?(?:阅读|读|写|喜欢|不喜欢|讨厌)(?:上面|下面|这段|这篇)的?(?:文字|文本|文章)的人(?:是|为)[：:]?"
    ),
)
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»", "「": "」"}


def strip_prompt_frame(persona: str) -> str:
    """The persona without a leftover frame of the prompt or quotes around it; the text itself when it has none."""
    text = persona.strip()
    for _ in range(3):  # frames can nest: 'Persona: "The person who is likely to ... is a ..."'
        before = text
        for frame in _PROMPT_FRAMES:
            text = frame.sub("", text, count=1)
        if len(text) > 1 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            break
    if text != persona.strip() and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text if text != persona.strip() else persona


# --- truncation ---------------------------------------------------------------------------------------------------
_DANGLING_WORDS = frozenset(
    # Words that cannot end a sentence: articles, possessive determiners, conjunctions, and adjectives that only stand
    # before a noun. Not prepositions or pronouns: "the causes she cares about", "a mentor who inspired her" are
    # whole sentences.
    """
    a an the his their its my our your and or but nor whose such very
    self-proclaimed so-called would-be wannabe avid aspiring budding fellow former die-hard lifelong longtime
    der die das den dem des ein eine einen einem einer eines und oder für zum zur im vom beim
    el los las un una unos unas de del y con para por que su sus al muy
    le les une des du et ou avec pour dont
    """.split()
)
_DANGLING_END = (
    r"(?:[,;:(\-–—/&]|\.\.\.|…|的|和|与|及|以及|或|对|把|被|从|向|给|关于|去|、|，|の|を|が|に|は|と|や)\s*$"
)
_LAST_WORD = r"([^\W\d_]+(?:['’-][^\W\d_]+)*)[\s.!?]*$"
_PAIRS = (("(", ")"), ("[", "]"), ("“", "”"), ("«", "»"), ("「", "」"), ("（", "）"))


def _truncated(text: str, measures: dict) -> bool:
    if measures["dangling_end"]:
        return True
    if any(text.count(left) > text.count(right) for left, right in _PAIRS):
        return True
    # As written: a capital "A" ends "Plan A", a lower-case one is an article with its noun cut off.
    return measures["last_word"] in _DANGLING_WORDS


# --- evidence of a name, a thing, a place, an event ---------------------------------------------------------------
_HONORIFIC = re.compile(
    r"^(?:mr|mrs|ms|mx|miss|dr|prof|sir|dame|lord|lady|mlle|mme|m|herr|frau|sr|sra|srta|don|doña|dott|sig|sig\.ra)\.?"
    r"(?:\s+|$)",
    re.IGNORECASE,
)
_NAME_PARTICLES = frozenset("de la del van von der den du da di dos das bin ibn al el y le".split())
_HEAD_CATEGORIES = {
    "food_or_recipe": """
        recipe recipes dish dishes cake cakes soup stew salad bread pie pies cookie cookies pasta curry sauce dessert
        meal cocktail beverage snack sandwich pizza burger casserole smoothie pastry cuisine
        rezept rezepte gericht kuchen suppe eintopf salat brot torte
        receta recetas plato platos pastel sopa guiso ensalada postre tarta
        """,
    "place": """
        city town village country region island mountain river lake park museum restaurant cafe café hotel resort
        beach street neighborhood neighbourhood building tower bridge castle cathedral temple palace monument
        university campus airport station stadium market mall district province valley desert forest landmark
        stadt dorf land insel berg fluss see museum hotel strand straße gebäude turm brücke schloss kirche bahnhof
        ciudad pueblo país isla montaña río lago parque museo restaurante hotel playa calle edificio torre puente
        castillo catedral mercado barrio
        """,
    "event": """
        festival conference concert event tournament championship exhibition fair ceremony celebration summit
        competition marathon parade webinar symposium convention expo gala carnival
        festival konferenz konzert veranstaltung turnier meisterschaft ausstellung messe zeremonie
        festival conferencia concierto evento torneo campeonato exposición feria ceremonia celebración
        """,
    "product_or_work": """
        product device smartphone phone laptop computer app application software gadget machine vehicle car novel
        film movie documentary album song article essay poem painting website platform toy brand company startup
        organization organisation corporation charity nonprofit franchise textbook guidebook handbook manual
        podcast newsletter magazine newspaper
        produkt gerät handy laptop computer software maschine fahrzeug auto roman film buch lied album artikel
        gedicht gemälde webseite plattform spielzeug marke firma unternehmen organisation zeitschrift
        producto dispositivo teléfono portátil computadora aplicación máquina vehículo coche novela película libro
        canción álbum artículo poema pintura plataforma juguete marca empresa organización revista
        """,
}
_HEAD_CATEGORY = {word: category for category, words in _HEAD_CATEGORIES.items() for word in words.split()}
_HEAD_LANGUAGES = {
    # language: (determiners that open the text, words that end the first noun phrase, where its head is)
    "en": (
        "a an the this one some",
        # Prepositions, relatives, conjunctions, verbs and participles, articles (a second noun phrase starts).
        "of for with in on at from by about to near through across along around over under between during after"
        " before against among within without into onto via every each who that which whose where when who's"
        " that's and or is are was were has had located known made held set written published released directed"
        " produced designed built founded based created inspired named called offering served featuring a an the",
        "last",
    ),
    "de": (
        "ein eine einer der die das dieser diese",
        "von für mit in im auf an am aus bei zu zum zur über nahe der die das den dem dessen deren wo und oder ist"
        " sind war hat",
        "last",
    ),
    "es": (
        "un una el la este esta",
        "de del para con en sobre por que cuyo cuya donde y o es son fue tiene",
        "first",
    ),
}
_HEAD_LANGUAGES = {
    lang: (frozenset(d.split()), frozenset(b.split()), where) for lang, (d, b, where) in _HEAD_LANGUAGES.items()
}
_FUNCTION_WORDS = {
    "en": frozenset("the a an and of with in on for to at by from who that is".split()),
    "de": frozenset("der die das und mit von für ein eine einer ist im zu auf den".split()),
    "es": frozenset("el la los las de del y con en un una que para por es".split()),
}
_RECIPE_STEPS = (
    r"(?i)\b(?:preheat|tablespoons?|teaspoons?|tbsp|tsp|ingredients\s*:|bake for|stir in|simmer for|serves \d)\b"
)
_CLAUSE_END = re.compile(r"[,.;:!?()\[\]—–]|\s-\s")
_HEAD_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")  # head nouns are looked for in Latin-script languages
MAX_NOUN_PHRASE = 6
# Chinese measure words after 一 (one): they name the kind of thing counted; persons are counted by 位, 名, 个.
_CHINESE_MEASURE = re.compile(r"^(?:这是)?一(?:款|座|道|场|部|本|台|首|篇|辆|件|所|家位于)")
_CHINESE_MEASURE_CATEGORY = {
    "款": "product_or_work",
    "部": "product_or_work",
    "本": "product_or_work",
    "台": "product_or_work",
    "首": "product_or_work",
    "篇": "product_or_work",
    "辆": "product_or_work",
    "件": "product_or_work",
    "座": "place",
    "所": "place",
    "家位于": "place",
    "场": "event",
    "道": "food_or_recipe",
}


def quality_filter(personas: Sequence[str | None]) -> list[str | None]:
    """For each persona, the reason it is rejected (one of REASONS), or None when it passes."""
    texts = [(p or "").strip() for p in personas]
    column = pl.Series(texts, dtype=pl.String)
    # The patterns run in polars (Rust regex, over the whole batch); what needs a text's words runs in Python.
    measures = length_frame(texts).with_columns(
        # Letter words of the space-separated scripts (with their marks: Devanagari vowel signs stay in the word).
        words=column.str.to_lowercase().str.extract_all(LETTER_WORD),
        continua=column.str.contains(f"[{CONTINUA}]"),
        dangling_end=column.str.contains(_DANGLING_END),
        last_word=column.str.extract(_LAST_WORD, 1),
        refusal=column.str.contains(_REFUSAL),
        template_echo=column.str.contains(_TEMPLATE) | column.str.ends_with("{") | column.str.ends_with("}"),
        recipe_steps=column.str.count_matches(_RECIPE_STEPS) >= 2,
    )
    return [_rejection(text, row) for text, row in zip(texts, measures.iter_rows(named=True), strict=True)]


def _rejection(text: str, measures: dict) -> str | None:
    if not text:
        return "empty"
    words = measures["words"] or []
    if _truncated(text, measures):
        return "truncated"
    if measures["length_in_words"] < MIN_WORDS:
        return "too_short"
    if measures["length_in_words"] > MAX_WORDS:
        return "too_long"
    if measures["refusal"]:
        return "refusal"
    if measures["template_echo"]:
        return "template_echo"
    if measures["letters"] < 0.5 * measures["visible"]:
        return "mostly_non_letters"
    if _repetitive(words) or (measures["continua"] and _repetitive_characters(text)):
        return "repetitive"
    if _HONORIFIC.match(text) and _name_only(text):
        return "bare_name"
    return _not_a_person(text, words, measures["recipe_steps"])


def _repetitive(words: list[str]) -> bool:
    counts = Counter(w for w in words if len(w) > 3)
    if counts and len(words) >= 9 and counts.most_common(1)[0][1] > len(words) / 3:
        return True
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and trigrams.most_common(1)[0][1] >= 3


def _repetitive_characters(text: str, run: int = 6) -> bool:
    """A run of `run` characters (no spaces) that recurs 3+ times: "我喜欢我喜欢我喜欢..." has no words to count."""
    compact = re.sub(r"\s+", "", text)
    runs = Counter(compact[i : i + run] for i in range(len(compact) - run + 1))
    return bool(runs) and runs.most_common(1)[0][1] >= 3


def _name_only(text: str) -> bool:
    """Every word after the honorific starts with a capital letter or is a name particle."""
    rest = _HONORIFIC.sub("", text, count=1).strip(" .,")
    names = rest.split()
    return 0 < len(names) <= 6 and all(w[:1].isupper() or w.lower() in _NAME_PARTICLES for w in names)


def _not_a_person(text: str, words: list[str], recipe_steps: bool) -> str | None:
    """The category of what the text describes instead of a person (a REASONS entry), or None."""
    if recipe_steps:
        return "food_or_recipe"
    measure = _CHINESE_MEASURE.match(text)
    if measure:
        return _CHINESE_MEASURE_CATEGORY[measure.group(0).removeprefix("这是")[1:]]
    language = _language(words)
    if language is None:
        return None
    first_clause = _CLAUSE_END.split(text, maxsplit=1)[0]
    clause_words = [w.lower() for w in _HEAD_WORD.findall(first_clause)]
    return _HEAD_CATEGORY.get(_head_noun(clause_words, *_HEAD_LANGUAGES[language]) or "")


def _language(words: list[str]) -> str | None:
    """The language among those with head-noun rules whose function words the text uses most (None on a tie)."""
    scores = sorted(((sum(w in vocabulary for w in words), lang) for lang, vocabulary in _FUNCTION_WORDS.items()))
    (second, _), (best, language) = scores[-2], scores[-1]
    return language if best > second else None


def _head_noun(words: list[str], determiners: frozenset, boundaries: frozenset, where: str) -> str | None:
    """The noun of the text's first noun phrase: its last word (English, German) or its first (Spanish)."""
    start = 1 if words and words[0] in determiners else 0
    phrase = []
    for word in words[start:]:
        if word in boundaries or (where == "last" and word.endswith("ing")):  # "a curator preparing an exhibition"
            break
        phrase.append(word)
    if not phrase or len(phrase) > MAX_NOUN_PHRASE:  # no plain noun phrase opens the text: no evidence
        return None
    return phrase[-1] if where == "last" else phrase[0]
