"""The Observe tab's handler without a browser: what a pasted line or an uploaded file gives, and clear messages
for bad input (the browser test in test_app.py checks the page itself)."""

from __future__ import annotations

import pytest

from specviz.app import observe_tab
from specviz.app.observe_tab import OWN_COSTS, analyse

# a vLLM V1 interval whose acceptance drops to zero after position 2 (100 steps: 60, 30, 0, 0 accepted)
LINE = (
    "INFO 06-10 12:00:00 [metrics.py:96] SpecDecoding metrics: Mean acceptance length: 1.90, "
    "Accepted throughput: 9.00 tokens/s, Drafted throughput: 40.00 tokens/s, Accepted: 90 tokens, "
    "Drafted: 400 tokens, Per-position acceptance rate: 0.600, 0.300, 0.000, 0.000, Avg Draft acceptance rate: 22.5%"
)


def run(text: str = "", files=None, preset: str = OWN_COSTS, c=None, v2=None, slope=None) -> tuple:
    return analyse(text, files, False, "", preset, c, v2, slope)


def test_a_vllm_line_gives_the_curve_histogram_and_a_flag() -> None:
    table, flags, curve, hist, series, k_text, _ = run(LINE)
    assert table.iloc[0]["steps"] == "100*"  # accepted / sum of the rates, derived
    assert table.iloc[0]["mean acceptance length"].startswith("1.900")
    assert "drops to about zero after position 2" in flags
    assert list(curve.data[0].y) == [0.6, 0.3, 0.0, 0.0]
    assert list(hist.data[0].x) == [1, 2, 3, 4, 5] and list(hist.data[0].y) == [40, 30, 30, 0, 0]
    assert "Type your costs" in k_text  # no default pretends to know the hardware
    assert "Type your costs" in run(LINE, c=0, v2=0, slope=0)[5]  # the page's empty number boxes send zeros


def test_which_k_with_typed_costs_is_modeled() -> None:
    _, _, _, _, _, k_text, k_fig = run(LINE, c=0.05, v2=1.0, slope=0.0)
    assert k_text.startswith("**MODELED:** k = 2 is best")
    assert "MODELED" in k_fig.layout.title.text


def test_a_preset_says_what_it_assumes() -> None:
    preset = next(iter(observe_tab.PRESETS))
    _, _, _, _, _, k_text, _ = run(LINE, preset=preset)
    assert observe_tab.PRESETS[preset].assumes in k_text


def test_a_series_of_lines_is_plotted_over_time() -> None:
    second = (
        LINE.replace("12:00:00", "12:00:10")
        .replace("Accepted: 90", "Accepted: 60")
        .replace("0.600, 0.300", "0.400, 0.200")
    )
    *_, series, _, _ = run(LINE + "\nsome other log line\n" + second)
    assert len(series.data[0].y) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello\nno records here\n", "no acceptance record found"),
        ("", "paste log lines"),
        (LINE.replace("Mean acceptance length: 1.90", "Mean acceptance length: nan"), "1 refused.*finite number"),
        (LINE.replace("0.600", "1.600"), "1 refused.*between 0 and 1"),
        (LINE.replace("Accepted: 90", "Accepted: 900"), "1 refused.*more than drafted"),
    ],
    ids=["no record", "empty", "nan", "rate above one", "accepted above drafted"],
)
def test_bad_text_gets_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(text)


def test_refused_records_are_said_beside_good_ones() -> None:
    _, flags, *_ = run(LINE + "\n" + LINE.replace("Accepted: 90", "Accepted: 900"))
    assert "1 refused" in flags


def test_non_falling_rates_are_read_and_flagged() -> None:
    _, flags, *_ = run(LINE.replace("0.600, 0.300, 0.000, 0.000", "0.300, 0.600, 0.000, 0.000"))
    assert "rises with position" in flags


def test_binary_and_oversized_files(tmp_path, monkeypatch) -> None:
    binary = tmp_path / "dump.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(ValueError, match="no acceptance record found.*binary"):
        run(files=[str(binary)])
    big = tmp_path / "big.log"
    big.write_text(LINE + "\n")
    monkeypatch.setattr(observe_tab, "UPLOAD_CAP", 10)
    with pytest.raises(ValueError, match="reads files up to"):
        run(files=[str(big)])


def test_token_text_in_labels_is_escaped(tmp_path) -> None:
    path = tmp_path / "x.log"
    path.write_text(LINE.replace("[metrics.py:96]", "[metrics.py:96] <img src=x onerror=alert(1)>") + "\n")
    table, flags, *_ = run(files=[str(path)])
    assert "<img" not in flags
