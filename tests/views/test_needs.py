"""The Learn tab says what each headline needs and whether the machine serving the page has it."""

from __future__ import annotations

from specviz.app.learn import learn_markdown
from specviz.views.headlines import ROWS
from specviz.views.needs import NEEDS, Machine, cell


def test_every_learn_row_says_what_its_headline_needs():
    assert set(NEEDS) == set(ROWS)
    text = learn_markdown()
    assert "{need_" not in text and "{" + "prompt_lookup}" not in text
    for key in NEEDS:
        assert NEEDS[key].text in text


def test_the_verdict_follows_the_machine():
    cpu, one, two = Machine(0, "CPU only"), Machine(1, "GPU"), Machine(2, "GPU")
    assert (
        "Here: no" in cell("mirror", cpu) and "Here: no" in cell("mirror", one) and "Here: yes" in cell("mirror", two)
    )
    assert "Here: no" in cell("batch", cpu) and "Here: yes" in cell("batch", one)
    assert "Here: depends" in cell("prompt_lookup", cpu)
    assert "Here: no" in cell("sorted", two)  # one target per run on the page, whatever the machine
