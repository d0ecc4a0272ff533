import math

import pytest

from closecast.core.formatting import (
    NA,
    basis_points,
    distinct,
    metric,
    percent,
    plural,
    pvalue,
    signed,
    significant,
)


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf])
def test_a_missing_or_infinite_number_reads_na_everywhere(missing: float | None) -> None:
    """One rule for the summary, the card and the run note: never `nan%` or `inf bp`."""
    assert {percent(missing), basis_points(missing), signed(missing), pvalue(missing)} == {NA}
    assert significant(missing) == NA and significant(missing, missing="—") == "—"
    assert percent(missing, missing="—") == "—"
    assert metric({"skill": missing} if missing is not None else {}, "skill") is None


def test_numbers_read_as_fractions_of_the_last_close() -> None:
    assert percent(0.0123) == "1.2%" and percent(0.0123, 2, sign=True) == "+1.23%"
    assert percent(0.0091, 4) == f"{0.0091:.4%}"
    assert basis_points(0.0123) == "123 bp" and basis_points(0.00123, 1) == "12.3 bp"
    assert signed(0.01234) == "+0.0123" and significant(0.04696884) == "0.0469688"
    assert pvalue(0.004) == "< 0.01" and pvalue(0.347) == "0.35"
    assert plural(1, "ticker") == "1 ticker" and plural(3, "ticker") == "3 tickers"
    assert metric({"skill": 0.5}, "skill") == 0.5 and metric(None, "skill") is None


def test_distinct_shows_the_fewest_digits_that_tell_two_scores_apart() -> None:
    assert distinct(0.046969, 0.048005) == ("0.047", "0.048")
    assert distinct(0.0429641, 0.0429645) == ("0.042964", "0.042965")
    assert distinct(0.5, 0.5) == ("0.5", "0.5")
