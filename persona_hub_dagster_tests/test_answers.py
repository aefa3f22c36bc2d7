"""Answer extraction, normalization and agreement for eval/math."""

import pytest

from persona_hub_dagster.lib.evaluation.answers import agreement, equivalent, last_number_line, normalize


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("\\boxed{\\dfrac{3}{4}}", "3/4"),
        ("75%", "0.75"),
        ("1,200 m", "1200"),
        ("$1,234.50", "1234.5"),
        ("The answer is 42.", "42"),
        ("x = 4", "4"),
        ("2*sqrt(2)", "sqrt(8)"),
        ("\\sqrt{8}", "2.8284271247"),
        ("2x + 2", "2(x+1)"),
        ("12 cm^2", "12"),
        ("1e3", "1000"),
        ("-0.5", "-1/2"),
        ("π/2", "1.5707963268"),
        ("4 pi", "4*pi"),
        ("5 m/s", "5"),
    ],
)
def test_equivalent_forms_agree(a, b):
    assert equivalent(normalize(a), normalize(b)), (normalize(a), normalize(b))


@pytest.mark.parametrize(
    ("a", "b"), [("3/4", "0.74"), ("42", "24"), ("2x", "2y"), ("2x", "2"), ("4 pi", "4"), ("12", ""), ("yes", "no")]
)
def test_different_answers_disagree(a, b):
    assert not equivalent(normalize(a), normalize(b))


def test_unsafe_text_never_reaches_the_expression_parser():
    hostile = "__import__('os').system('touch /tmp/pwned')"
    answer = normalize(hostile)
    assert answer.expression is None and answer.value is None
    assert not equivalent(answer, normalize("0"))


def test_agreement_counts_the_largest_group():
    count, majority = agreement([normalize("0.5"), normalize("1/2"), normalize("3"), normalize("")])
    assert count == 2 and majority.value == 0.5
    assert agreement([normalize(""), normalize("")]) == (0, None)
    assert agreement([normalize("7"), normalize("8")])[0] == 1


def test_a_program_answer_is_its_last_printed_line():
    assert last_number_line("working...\n\n 17.5 \n") == "17.5"
    assert last_number_line("") == ""
