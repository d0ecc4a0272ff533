import re

import pytest

from closecast.tasks.registry.gate import Decision, decide_promotion
from closecast.tasks.registry.model_card import (
    MAX_DESCRIPTION,
    CardLinks,
    comparison_table,
    describe_version,
    distinct,
    headline,
)


def metrics(score: float, rmse: float = 0.0091, **extra: float) -> dict[str, float]:
    """A version's test metrics as `score_distribution` names them."""
    return {
        "interval_score_80": score * 0.8,
        "interval_score_95": score * 1.2,
        "test_interval_score": score,
        "test_rmse": rmse,
        "naive_rmse": 0.0095,
        "coverage_80": 0.792,
        "coverage_95": 0.948,
        "skill": 1 - rmse / 0.0095,
        **extra,
    }


NO_INTERVALS = {"test_rmse": 0.0093, "naive_rmse": 0.0095, "skill": 1 - 0.0093 / 0.0095}
LINKS = CardLinks("#/experiments/1/runs/abc", "abc")


def card(mine: dict[str, float], champion: dict[str, float] | None, mode: str = "auto") -> str:
    decision = decide_promotion(mine, ("1", champion) if champion is not None else None, mode)
    return describe_version("2", mine, decision, champion or {}, 250, ["- data"], LINKS)


@pytest.mark.parametrize(
    ("mine", "champion", "mode", "first"),
    [
        (metrics(0.0301), metrics(0.0301), "auto",
         "Rejected: ties champion v1 on the same 250 test windows (interval score 0.0301 each)."),
        (metrics(0.0301), metrics(0.0312), "auto",
         "Champion: beats v1 on the same 250 test windows (interval score 0.0301 vs 0.0312)."),
        (metrics(0.0312), metrics(0.0301), "auto",
         "Rejected: does not beat champion v1 on the same 250 test windows "
         "(interval score 0.0312 vs 0.0301)."),
        (metrics(0.0301), None, "auto", "First version: champion."),
        (metrics(0.0301), metrics(0.0312), "manual", "Manual review: not promoted automatically."),
        (metrics(0.0301, rmse=0.0092), NO_INTERVALS, "auto",
         "Champion: beats v1 on the same 250 test windows "
         "(test_rmse, as v1 has no intervals: 0.0092 vs 0.0093)."),
        (metrics(0.0301), {}, "auto",
         "Champion: replaces v1, which cannot score these 250 test windows."),
    ],
)  # fmt: skip
def test_card_opens_with_the_decision_in_one_plain_sentence(
    mine: dict[str, float], champion: dict[str, float] | None, mode: str, first: str
) -> None:
    """The first line (all a list view shows) is the decision and why, without markdown."""
    text = card(mine, champion, mode)
    assert text.splitlines()[0] == first
    assert not re.search(r"\*|\||^#|`", first)


def test_headline_shows_enough_digits_to_tell_two_scores_apart() -> None:
    """Scores equal to 4 digits are shown to the digit where they differ."""
    decision = Decision(True, "champion", "", champion="1", compared="test_interval_score")
    line = headline(decision, metrics(0.030123), metrics(0.030124), 250)
    assert line.endswith("(interval score 0.030123 vs 0.030124).")
    assert distinct(0.5, 0.5) == ("0.5", "0.5")


def _rows(text: str) -> dict[str, list[str]]:
    """The comparison table's rows: label -> cells."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_card_puts_challenger_and_champion_side_by_side_with_the_difference() -> None:
    """Both re-scored on the same windows, each metric with its difference; a tie says so."""
    mine, theirs = metrics(0.0312, rmse=0.0091), metrics(0.0301, rmse=0.0091)
    rows = _rows(card(mine, theirs))
    assert rows["metric"] == ["v2 (this version)", "champion v1", "v2 − v1"]
    assert rows["interval score, mean (decides)"] == ["0.0312", "0.0301", "+0.0011"]
    assert rows["interval score 95%"] == ["0.03744", "0.03612", "+0.00132"]
    assert rows["test_rmse"] == ["0.0091", "0.0091", "0 (tie)"]
    assert rows["coverage 80%"] == ["79.2%", "79.2%", "0 (tie)"]
    text = card(mine, theirs)
    assert "relative to the last close" in text and "coverage is the %" in text
    assert "**Decision:** rejected — interval score 0.031200 does not beat" in text


def test_first_version_has_no_champion_column_and_point_champion_shows_dashes() -> None:
    """A first version stands alone; a champion without intervals has "—" for them."""
    alone = _rows(card(metrics(0.0301), None))
    assert alone["metric"] == ["v2 (this version)"]
    assert alone["skill"] == [f"{1 - 0.0091 / 0.0095:.6g}"]
    point = _rows(card(metrics(0.0301, rmse=0.0092), NO_INTERVALS))
    assert point["interval score, mean"] == ["0.0301", "—", "—"]
    assert point["coverage 95%"] == ["94.8%", "—", "—"]
    assert point["test_rmse (decides)"] == ["0.0092", "0.0093", "-0.0001"]


def test_card_stays_within_mlflows_description_limit() -> None:
    """Hundreds of plots: a dozen are linked, the rest counted, and the card fits 5000 chars."""
    plots = {
        f"plots/p{i:03d}.png": f"#/experiments/1/runs/abc/artifactPath/p{i:03d}" for i in range(300)
    }
    links = CardLinks("#/experiments/1/runs/abc", "abc", "http://ui/runs/flow-run/f", plots)
    decision = decide_promotion(metrics(0.03), None, "auto")
    data = [f"- line {i} " + "x" * 200 for i in range(30)]
    text = describe_version("2", metrics(0.03), decision, {}, 250, data, links)
    assert len(text) <= MAX_DESCRIPTION and text.endswith("(cut to MLflow's description limit)")
    short = describe_version("2", metrics(0.03), decision, {}, 250, ["- data"], links)
    assert "[plots/p011.png]" in short and "p012" not in short and "and 288 more" in short
    assert "- Prefect flow run: [f](http://ui/runs/flow-run/f)" in short


def test_comparison_table_marks_the_metric_that_decided() -> None:
    """The row the gate compared is marked, so a reviewer knows which number mattered."""
    decision = Decision(False, "rejected", "", champion="1", compared="test_rmse")
    lines = comparison_table("2", metrics(0.03), decision, NO_INTERVALS)
    assert [line.split("|")[1].strip() for line in lines if "(decides)" in line] == [
        "test_rmse (decides)"
    ]
