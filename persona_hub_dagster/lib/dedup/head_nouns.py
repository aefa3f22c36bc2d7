"""What a text names by its head noun, when that is not a person: a dish, a place, an event, or a product, an
organization or a work (the quality rule NotAPerson, filters.py).

The head noun is found in English, German and Spanish (the noun that ends the first noun phrase, or starts it in
Spanish; the language is the one whose function words the text uses most) and by the measure word in Chinese (一款 a
product, 一座 a place, 一场 an event, 一道 a dish); texts in other languages get no category.
"""

from __future__ import annotations

import re

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
CATEGORIES = tuple(_HEAD_CATEGORIES)
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


def head_category(text: str, words: list[str], *, max_phrase: int = MAX_NOUN_PHRASE) -> str | None:
    """The category (one of CATEGORIES) the text's head noun or Chinese measure word names, or None. `words`: the
    text's lower-case letter words (to tell its language)."""
    measure = _CHINESE_MEASURE.match(text)
    if measure:
        return _CHINESE_MEASURE_CATEGORY[measure.group(0).removeprefix("这是")[1:]]
    language = _language(words)
    if language is None:
        return None
    first_clause = _CLAUSE_END.split(text, maxsplit=1)[0]
    clause_words = [w.lower() for w in _HEAD_WORD.findall(first_clause)]
    return _HEAD_CATEGORY.get(_head_noun(clause_words, *_HEAD_LANGUAGES[language], max_phrase=max_phrase) or "")


def _language(words: list[str]) -> str | None:
    """The language among those with head-noun rules whose function words the text uses most (None on a tie)."""
    scores = sorted(((sum(w in vocabulary for w in words), lang) for lang, vocabulary in _FUNCTION_WORDS.items()))
    (second, _), (best, language) = scores[-2], scores[-1]
    return language if best > second else None


def _head_noun(
    words: list[str], determiners: frozenset, boundaries: frozenset, where: str, *, max_phrase: int = MAX_NOUN_PHRASE
) -> str | None:
    """The noun of the text's first noun phrase: its last word (English, German) or its first (Spanish)."""
    start = 1 if words and words[0] in determiners else 0
    phrase = []
    for word in words[start:]:
        if word in boundaries or (where == "last" and word.endswith("ing")):  # "a curator preparing an exhibition"
            break
        phrase.append(word)
    if not phrase or len(phrase) > max_phrase:  # no plain noun phrase opens the text: no evidence
        return None
    return phrase[-1] if where == "last" else phrase[0]
