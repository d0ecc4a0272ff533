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
         "Rejected: ties champion v1 on the same 250 test windows (interval score 301 bp each)."),
        (metrics(0.0301), metrics(0.0312), "auto",
         "Champion: beats v1 on the same 250 test windows (interval score 301 vs 312 bp)."),
        (metrics(0.0312), metrics(0.0301), "auto",
         "Rejected: does not beat champion v1 on the same 250 test windows "
         "(interval score 312 vs 301 bp)."),
        (metrics(0.0301), None, "auto", "First version: champion."),
        (metrics(0.0301), metrics(0.0312), "manual",
         "Manual review: the gate recommends promoting (it beats v1 on the same 250 test "
         "windows (interval score 301 vs 312 bp)); run closecast promote 2."),
        (metrics(0.0312), metrics(0.0301), "manual",
         "Manual review: the gate would keep champion v1 (this version does not beat champion "
         "v1 on the same 250 test windows (interval score 312 vs 301 bp)); closecast promote 2 "
         "promotes it anyway."),
        (metrics(0.0301, rmse=0.0092), NO_INTERVALS, "auto",
         "Champion: beats v1 on the same 250 test windows "
         "(test_rmse, as v1 has no intervals: 92 vs 93 bp)."),
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
    assert line.endswith("(interval score 301.23 vs 301.24 bp).")
    assert distinct(0.5, 0.5) == ("0.5", "0.5")


def _rows(text: str) -> dict[str, list[str]]:
    """The comparison table's rows: label -> cells."""
    plain = text.replace("&emsp;", "")  # the cells' padding (model_card.CELL_PAD)
    rows = [line.strip("|").split("|") for line in plain.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_card_puts_challenger_and_champion_side_by_side_with_the_difference() -> None:
    """Both re-scored on the same windows, each metric with its difference; a tie says so."""
    mine, theirs = metrics(0.0312, rmse=0.0091), metrics(0.0301, rmse=0.0091)
    rows = _rows(card(mine, theirs))
    assert rows["metric"] == ["v2 (this version)", "champion v1", "v2 − v1"]
    assert rows["interval score, mean (decides)"] == ["312.0 bp", "301.0 bp", "+11.0 bp"]
    assert rows["interval score 95%"] == ["374.4 bp", "361.2 bp", "+13.2 bp"]
    assert rows["test_rmse"] == ["91.0 bp", "91.0 bp", "0 (tie)"]
    assert rows["coverage 80%"] == ["79.2%", "79.2%", "0 (tie)"]
    text = card(mine, theirs)
    assert "basis points of the last close" in text and "coverage is the %" in text
    assert "**Decision:** rejected — interval score 0.031200 does not beat" in text


def test_first_version_has_no_champion_column_and_point_champion_shows_dashes() -> None:
    """A first version stands alone; a champion without intervals has "—" for them."""
    alone = _rows(card(metrics(0.0301), None))
    assert alone["metric"] == ["v2 (this version)"]
    assert alone["skill"] == [f"{1 - 0.0091 / 0.0095:.6g}"]
    point = _rows(card(metrics(0.0301, rmse=0.0092), NO_INTERVALS))
    assert point["interval score, mean"] == ["301.0 bp", "—", "—"]
    assert point["coverage 95%"] == ["94.8%", "—", "—"]
    assert point["test_rmse (decides)"] == ["92.0 bp", "93.0 bp", "-1.0 bp"]


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
    assert "Fan charts" not in short  # no rule recorded on the run: none stated
    ruled = CardLinks(links.run, links.run_id, None, {}, "every ticker up to 20")
    card = describe_version("2", metrics(0.03), decision, {}, 250, ["- data"], ruled)
    assert card.endswith(
        "- Fan charts (`plots/predicted_vs_actual_<ticker>.png`): every ticker up to 20."
    )


def test_comparison_table_marks_the_metric_that_decided() -> None:
    """The row the gate compared is marked, so a reviewer knows which number mattered."""
    decision = Decision(False, "rejected", "", champion="1", compared="test_rmse")
    lines = comparison_table("2", metrics(0.03), decision, NO_INTERVALS)
    assert [
        line.split("|")[1].replace("&emsp;", "").strip() for line in lines if "(decides)" in line
    ] == ["test_rmse (decides)"]


PAIRED = {"difference": -0.022, "difference_low": -0.039, "difference_high": -0.004,
          "pvalue": 0.011, "windows": 40, "sessions": 20, "since": "2024-03-01",
          "champion": "1", "compared": "test_interval_score"}  # fmt: skip


@pytest.mark.parametrize(
    ("decision", "first"),
    [
        (Decision(True, "champion", "", recommended=True, **PAIRED),
         "Champion: beats v1 on the 20 sessions after its selection: "
         "interval score −2.2% (95% CI −3.9% to −0.4%, p = 0.01)."),
        (Decision(False, "manual", "", recommended=True, **PAIRED),
         "Manual review: the gate recommends promoting (it beats v1 on the 20 sessions after "
         "its selection: interval score −2.2% (95% CI −3.9% to −0.4%, p = 0.01)); "
         "run closecast promote 2."),
        (Decision(False, "rejected", "", **PAIRED | {"pvalue": 0.2, "difference_high": 0.01}),
         "Rejected: scores better than champion v1 on the 20 sessions after its selection, "
         "but not beyond chance: interval score −2.2% (95% CI −3.9% to +1.0%, p = 0.20)."),
        (Decision(False, "rejected", "", **PAIRED | {"sessions": 0, "windows": 0}),
         "Rejected: no test window comes after champion v1's selection on 2024-03-01."),
    ],
)  # fmt: skip
def test_headline_gives_the_gates_difference_interval_and_pvalue(
    decision: Decision, first: str
) -> None:
    """The paired comparison on the fresh windows in the first line; a manual version's
    line names the exact command that promotes it."""
    text = describe_version("2", metrics(0.0301), decision, metrics(0.0312), 250, [], LINKS)
    assert text.splitlines()[0] == first
    if decision.sessions:
        assert (
            "**Gate:** interval score −2.2%" in text and "on 40 test windows (20 sessions)" in text
        )


def test_card_cells_carry_units_and_are_padded() -> None:
    """Cells carry units and an em space either side (MLflow's UI draws tables without
    padding and ignores alignment), so two numbers never run together; the alignment row
    has three dashes a cell, which its markdown renderer needs to draw a table at all."""
    lines = comparison_table("2", metrics(0.0301), Decision(False, "rejected", "", champion="1"),
                             metrics(0.0312))  # fmt: skip
    assert lines[1] == "|:---|:---:|:---:|:---:|"
    pad = "&emsp;"
    assert lines[4].split("|")[2:5] == [
        f" {pad}{c}{pad} " for c in ("301.0 bp", "312.0 bp", "-11.0 bp")
    ]
    assert lines[0].split("|")[1] == f" {pad}metric{pad} "
