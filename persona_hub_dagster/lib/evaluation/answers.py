"""Final answers: extracting them from model output, normalizing them, deciding whether two are the same.

"3/4", "0.75", "\\frac{3}{4}" and "75%" are one answer: a percent sign counts as a factor of 1/100.
Units and thousands separators are dropped ("1,200 m" -> 1200), `\\boxed{}` and `$...$` unwrapped, and what
remains is parsed as a number, a fraction, or (sympy) a simple expression. Two answers agree when both are
numbers within a relative tolerance, or when sympy proves their difference zero, or, failing both, when their
normalized text is equal.

sympy's parser evaluates Python, so model output reaches it only after a whitelist: digits, operators, brackets and
a few names (sqrt, pi, e, single-letter variables) -- anything else is compared as text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

REL_TOL = 1e-6
ABS_TOL = 1e-9

_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_SQRT = re.compile(r"\\sqrt\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_FRACTION = re.compile(r"^[+-]?\d+\s*/\s*\d+$")
_SAFE_EXPR = re.compile(r"^[0-9a-z+\-*/^().\s]+$")
_ALLOWED_NAMES = {"sqrt", "pi", "e", "exp", "log", "ln"}
# Units after a number: a word of 2+ letters or a one-letter unit (m, g, s, l, h), and whatever follows it
# ("12 cm^2", "3 apples", "5 m/s"), but never a math name ("4 pi") or a variable ("2x").
_TRAILING_WORDS = re.compile(
    r"(?<=[\d)])\s*(?!(?:pi|sqrt|exp|log|ln)\b)(?:[a-zA-Z°$€£]{2,}|[mgslh]\b)[a-zA-Z°²³$€£ /.^\d]*$"
)
_LEADING_LABEL = re.compile(r"^(the\s+)?(final\s+)?(answer|result)\s*(is|=|:)\s*", re.IGNORECASE)
_CURRENCY = re.compile(r"[$€£¥]")


@dataclass(frozen=True)
class Answer:
    raw: str
    text: str  # the normalized text form
    value: float | None  # numeric value when the answer is a number or a constant expression
    expression: str | None  # a sympy-parsable form when it is an expression

    @property
    def empty(self) -> bool:
        return not self.text


def normalize(raw: str | None) -> Answer:
    raw = "" if raw is None else str(raw)
    text = raw.strip()
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    text = text.strip().strip("$").strip()
    text = _LEADING_LABEL.sub("", text)
    if "=" in text:  # "x = 4" -> "4": the answer is the right-hand side
        text = text.rsplit("=", 1)[1]
    text = text.replace("\\left", "").replace("\\right", "").replace("\\cdot", "*").replace("\\times", "*")
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = _SQRT.sub(r"sqrt(\1)", text)
    text = text.replace("\\pi", "pi").replace("π", "pi").replace("√", "sqrt").replace("−", "-")
    text = _CURRENCY.sub("", text)
    text = _THOUSANDS.sub("", text)
    text = text.strip().rstrip(".").strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].strip()
    text = _TRAILING_WORDS.sub("", text).strip()
    text = re.sub(r"\s+", " ", text).lower()
    value = _numeric(text)
    if percent and value is not None:
        value /= 100
        text = _format(value)
    expression = None
    if value is None and _safe_expression(text):
        expression = text.replace("^", "**").replace("ln", "log")
        value = _constant_value(expression)
    return Answer(raw=raw, text=text if value is None else _format(value), value=value, expression=expression)


def equivalent(a: Answer, b: Answer) -> bool:
    if a.empty or b.empty:
        return False
    if a.value is not None and b.value is not None:
        return math.isclose(a.value, b.value, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if a.expression and b.expression and _sympy_equal(a.expression, b.expression):
        return True
    return a.text == b.text


def agreement(answers: list[Answer]) -> tuple[int, Answer | None]:
    """(size of the largest group of equivalent non-empty answers, that group's first answer)."""
    best, best_answer = 0, None
    for i, answer in enumerate(answers):
        if answer.empty:
            continue
        size = sum(1 for other in answers if equivalent(answer, other))
        if size > best or (size == best and best_answer is None):
            best, best_answer = size, answers[i]
    return best, best_answer


_STOPWORDS = frozenset("a an the is are was were be it its of to in on and or that this".split())


def token_f1(a: str, b: str) -> float:
    """Overlap of two free-text answers' content words (SQuAD-style F1 over case-folded words, stopwords dropped)."""
    left = [w for w in re.findall(r"\w+", a.casefold()) if w not in _STOPWORDS]
    right = [w for w in re.findall(r"\w+", b.casefold()) if w not in _STOPWORDS]
    if not left or not right:
        return 0.0
    common = sum(min(left.count(w), right.count(w)) for w in set(left))
    if not common:
        return 0.0
    precision, recall = common / len(right), common / len(left)
    return 2 * precision * recall / (precision + recall)


def same_answer(intended: str, given: str, min_f1: float = 0.6) -> bool:
    """Whether a solver's free-text answer says what the intended answer says: as numbers or expressions when both
    are, else by content-word overlap (F1 >= min_f1)."""
    a, b = normalize(intended), normalize(given)
    if a.empty or b.empty:
        return False
    if (a.value is not None and b.value is not None) or (a.expression and b.expression):
        return equivalent(a, b)
    return a.text == b.text or token_f1(intended, given) >= min_f1


def last_number_line(output: str) -> str:
    """A program's answer: the last non-empty line it printed."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _numeric(text: str) -> float | None:
    if _NUMBER.match(text):
        value = float(text)
        return value if math.isfinite(value) else None
    if _FRACTION.match(text):
        num, den = (part.strip() for part in text.split("/"))
        return float(Fraction(int(num), int(den))) if int(den) else None
    mixed = re.match(r"^\(([+-]?[\d.]+)\)/\(([+-]?[\d.]+)\)$", text)
    if mixed:
        try:
            den = float(mixed[2])
            return float(mixed[1]) / den if den else None
        except ValueError:
            return None
    return None


def _safe_expression(text: str) -> bool:
    if not text or len(text) > 120 or not _SAFE_EXPR.match(text) or "__" in text:
        return False
    names = set(re.findall(r"[a-z]+", text))
    return all(name in _ALLOWED_NAMES or len(name) == 1 for name in names)


@lru_cache(maxsize=4096)
def _parse(expression: str):
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    transformations = (*standard_transformations, implicit_multiplication_application)
    return parse_expr(expression, transformations=transformations, evaluate=True)


def _constant_value(expression: str) -> float | None:
    try:
        parsed = _parse(expression)
        if parsed.free_symbols:
            return None
        value = float(parsed.evalf())
    except Exception:
        return None
    return value if math.isfinite(value) else None


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    try:
        return sympy.simplify(_parse(a) - _parse(b)) == 0
    except Exception:
        return False


def _format(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"
