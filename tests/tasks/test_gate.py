import math

import numpy as np
import pandas as pd
import pytest
import torch

from closecast.models.calibration import normal_calibration
from closecast.models.encoding import Encoding
from closecast.models.forecaster import Forecaster
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import ScaleModel, spans_for_window
from closecast.tasks.modeling.evaluation import evaluate_model, score_distribution
from closecast.tasks.modeling.windows import WindowSet
from closecast.tasks.registry.gate import (
    Comparison,
    check_metrics,
    compare_scores,
    decide_promotion,
    fresh_windows,
    rescore_champion,
)

COLUMNS = ("close", "volume")


def scored(interval: float, rmse: float = 0.01) -> dict[str, float]:
    return {"test_interval_score": interval, "test_rmse": rmse}


NO_INTERVALS = {"test_rmse": 0.02, "test_interval_score": float("nan")}


@pytest.mark.parametrize(
    ("challenger", "champion", "mode", "promote", "tag", "says"),
    [
        (scored(0.05), None, "auto", True, "champion", "first version (interval score 0.050000"),
        (scored(0.04), ("3", scored(0.05)), "auto", True, "champion",
         "interval score 0.040000 beats champion v3's 0.050000 on the same test windows"),
        (scored(0.05, 0.001), ("3", scored(0.05)), "auto", False, "rejected",
         "interval score 0.050000 ties champion v3's 0.050000"),
        (scored(0.06, 0.001), ("3", scored(0.05, 0.02)), "auto", False, "rejected",
         "interval score 0.060000 does not beat champion v3's 0.050000"),
        (scored(0.06, 0.01), ("3", NO_INTERVALS), "auto", True, "champion",
         "champion v3 has no intervals, so test_rmse decides; test_rmse 0.010000 beats"),
        (scored(0.04), ("3", scored(0.05)), "manual", False, "manual", "closecast promote"),
        (scored(0.04), None, "manual", False, "manual", "promotion is manual"),
        (scored(0.04), ("3", {}), "auto", True, "champion", "v3 cannot score"),
    ],
)  # fmt: skip
def test_decide_promotion(
    challenger: dict[str, float],
    champion: tuple[str, dict[str, float]] | None,
    mode: str,
    promote: bool,
    tag: str,
    says: str,
) -> None:
    """First wins; later ones only by a strictly lower interval score (RMSE against a champion
    without intervals); manual never moves champion; the reason names both scores."""
    decision = decide_promotion(challenger, champion, mode)
    assert (decision.promote, decision.tag) == (promote, tag)
    assert says in decision.reason
    if champion is not None and champion[1] and mode == "auto":
        assert "vs champion v3's interval score" in decision.reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_check_metrics_refuses_non_finite(bad: float | None) -> None:
    """A missing or non-finite gated metric stops registration, naming the metric."""
    metrics = {"test_interval_score": 0.03, "test_rmse": 0.01, "naive_rmse": 0.02, "skill": 0.5}
    check_metrics(metrics)
    if bad is None:
        del metrics["skill"]
    else:
        metrics["skill"] = bad
    with pytest.raises(ValueError, match="metric skill is"):
        check_metrics(metrics)


def _champion(features: tuple[str, ...]) -> Forecaster:
    """A point-head champion without intervals: a spec-1 model."""
    config = LSTMConfig(hidden_size=4, distribution="none")
    module = LSTMForecaster(config, n_features=len(features))
    return Forecaster(module, Encoding(features=features, target="log_return"), 10)


def _spec3(features: tuple[str, ...], head: str, seed: int = 0) -> Forecaster:
    """A model of the default distribution with the HAR scale and the given head; its dense
    head gets random weights (at zero, both heads would draw the same intervals)."""
    torch.manual_seed(seed)
    module = LSTMForecaster(LSTMConfig(hidden_size=4), n_features=len(features))
    with torch.no_grad():
        module.head.weight.normal_(0, 0.5)
        module.head.bias.normal_(0, 0.5)
    scale = ScaleModel(spans_for_window(10), (0.3, 0.2, 0.1, 0.2, 0.1, 0.1))
    intervals = Intervals(scale, normal_calibration())
    encoding = Encoding(features=features, target="log_return")
    return Forecaster(module, encoding, 10, intervals=intervals, head=head)


def _test_windows(days: int, columns: int) -> WindowSet:
    """Four windows of `days` sessions; close (column 0) rises 1% a day, volume is flat."""
    close = 100 * 1.01 ** np.arange(4 + days, dtype=np.float64)
    windows = np.stack([close[i : i + days] for i in range(4)])[..., None]  # (N, T, 1)
    windows = np.concatenate([windows, np.full_like(windows, 1e6)][:columns], axis=2)
    return WindowSet(
        windows=windows,  # (N, T, C)
        next_close=close[days : days + 4],
        tickers=np.array(["AAA"] * 4),
        target_dates=pd.date_range("2024-01-02", periods=4, freq="B").to_numpy(),
        baseline_sigma=np.full(4, 0.01),
    )


def _ohlc_windows(days: int) -> tuple[WindowSet, tuple[str, ...]]:
    """Twelve windows of `days` sessions holding close, volume, high and low: a wavy close,
    a high and low around it, flat volume."""
    n = 12 + days
    close = 100 * np.exp(np.cumsum(0.01 * np.sin(np.arange(n))))
    rows = np.stack([close, np.full(n, 1e6), close * 1.01, close * 0.985], axis=1)  # (n, 4)
    windows = np.stack([rows[i : i + days] for i in range(12)])  # (12, T, 4)
    test = WindowSet(
        windows=windows,
        next_close=close[days : days + 12],
        tickers=np.array(["AAA"] * 12),
        target_dates=pd.date_range("2024-01-02", periods=12, freq="B").to_numpy(),
        baseline_sigma=np.full(12, 0.01),
    )
    return test, ("close", "volume", "high", "low")


def test_a_har_champion_and_an_lstm_challenger_are_scored_alike_on_the_same_windows() -> None:
    """Spec 3 on both sides: the close-only champion (head har) re-scored on the challenger's
    12-day windows gets the score of its own forecast of their last 10 days, drawn with its
    own head; the challenger's (head lstm) evaluation is the same score of the same windows."""
    test, columns = _ohlc_windows(12)
    champion = _spec3(("close",), "har")
    metrics, problem = rescore_champion("4", champion, test, columns)
    assert problem == "" and math.isfinite(metrics["test_interval_score"])
    own = test.windows[:, -10:, [0, 2, 3]]  # (12, 12, 4) -> (12, 10, 3): close, high, low
    assert metrics == score_distribution(champion.predict_distribution(own, test.tickers), test)
    other_head = _spec3(("close",), "lstm")
    rescored, _ = rescore_champion("4", other_head, test, columns)
    assert rescored["test_interval_score"] != metrics["test_interval_score"]
    assert rescored["test_rmse"] == metrics["test_rmse"]  # the same median, other intervals

    challenger = _spec3(("close", "volume"), "lstm", seed=1)
    windows = test.windows[:, -10:]  # the challenger reads all four columns
    challenger_test = WindowSet(**{**test.__dict__, "windows": windows})
    scored_alike = score_distribution(
        challenger.predict_distribution(windows, test.tickers), challenger_test
    )
    evaluated = evaluate_model(challenger, challenger_test).metrics
    assert {k: evaluated[k] for k in scored_alike} == scored_alike
    decision = decide_promotion(evaluated, ("4", metrics), "auto")
    wins = evaluated["test_interval_score"] < metrics["test_interval_score"]
    assert (decision.promote, decision.compared) == (wins, "test_interval_score")


def test_rescore_champion_reads_its_own_columns_of_the_challengers_windows() -> None:
    """A close-only champion scores longer windows holding more columns: its last 10 days of
    close; a champion lacking a column, or windows too short, get no metrics and the reason."""
    metrics, problem = rescore_champion("1", _champion(("close",)), _test_windows(12, 2), COLUMNS)
    assert math.isfinite(metrics["test_rmse"]) and "test_interval_score" in metrics
    assert problem == ""
    wider = _champion(("close", "volume"))
    assert rescore_champion("2", wider, _test_windows(12, 1), COLUMNS[:1]) == (
        {},
        "champion v2 cannot be re-scored: the test windows lack its column(s) volume",
    )
    metrics, problem = rescore_champion("3", _champion(("close",)), _test_windows(5, 2), COLUMNS)
    assert metrics == {} and problem.startswith("champion v3 cannot be re-scored: its window is")


@pytest.mark.parametrize(
    ("champion", "mode", "against", "compared"),
    [
        (None, "auto", None, ""),
        (("3", scored(0.05)), "auto", "3", "test_interval_score"),
        (("3", scored(0.04)), "auto", "3", "test_interval_score"),
        (("3", NO_INTERVALS), "auto", "3", "test_rmse"),
        (("3", {}), "auto", "3", ""),
        (("3", scored(0.05)), "manual", "3", "test_interval_score"),
    ],
)
def test_decision_names_the_champion_faced_and_the_metric_that_decided(
    champion: tuple[str, dict[str, float]] | None, mode: str, against: str | None, compared: str
) -> None:
    """The card reads from the decision which version it faced and which score decided (or,
    under manual promotion, would have decided)."""
    decision = decide_promotion(scored(0.04), champion, mode)
    assert (decision.champion, decision.compared) == (against, compared)


DAYS = pd.date_range("2024-01-02", periods=6, freq="B").to_numpy()
TWO_TICKERS = np.repeat(DAYS, 2)  # (12,): two tickers a day


def test_fresh_windows_are_the_ones_after_the_champions_selection() -> None:
    """Windows dated after the champion's test_end are fresh; no test_end: all of them."""
    fresh = fresh_windows(TWO_TICKERS, "2024-01-05")  # a Friday: the 4th session
    assert fresh.tolist() == [False] * 8 + [True] * 4
    assert fresh_windows(TWO_TICKERS, "").all()


def test_the_gate_compares_only_the_fresh_windows() -> None:
    """A champion that scores far better on the windows it was selected on but worse on the
    fresh ones loses: the old windows carry its luck and do not count."""
    champion = np.where(fresh_windows(TWO_TICKERS, "2024-01-05"), 0.050, 0.030)
    challenger = np.full(12, 0.040)
    challenger[8:] = [0.039, 0.040, 0.041, 0.040]  # 2% better on the two fresh sessions
    comparison = compare_scores(challenger, champion, TWO_TICKERS, "2024-01-05")
    assert comparison is not None
    assert (comparison.windows, comparison.test.sessions) == (4, 2)
    decision = decide_promotion(
        scored(challenger.mean()), ("3", scored(champion.mean())), "auto", comparison=comparison
    )
    assert challenger.mean() > champion.mean()  # on all the windows it would lose
    assert (decision.promote, decision.tag) == (True, "champion")
    assert decision.difference == pytest.approx(-0.2)  # 0.040 vs 0.050
    assert (decision.windows, decision.sessions, decision.since) == (4, 2, "2024-01-05")
    assert decision.reason.startswith(
        "beats champion v3 on the 2 sessions (4 windows) after v3's selection on 2024-01-05"
    )
    assert "interval score −20.0% (95% CI" in decision.reason
    assert decision.metrics["gate_difference"] == pytest.approx(-0.2)
    assert set(decision.metrics) == {
        "gate_difference", "gate_difference_low", "gate_difference_high", "gate_pvalue",
        "gate_windows", "gate_sessions",
    }  # fmt: skip


def _comparison(daily: list[float], since: str = "2024-01-01") -> Comparison | None:
    """Challenger − champion of `daily` per session (two tickers alike), champion at 0.05."""
    champion = np.full(12, 0.05)
    return compare_scores(champion + np.repeat(daily, 2), champion, TWO_TICKERS, since)


def test_promotion_alpha_holds_back_a_better_challenger_within_the_noise() -> None:
    """Better on average but not beyond chance: promoted without alpha, held back with it,
    and the reason says so; clearly better passes alpha too."""
    noisy = _comparison([-0.004, 0.003, -0.003, 0.002, -0.004, 0.001])  # mean −0.0005
    plain = decide_promotion(scored(0.0495), ("3", scored(0.05)), "auto", comparison=noisy)
    assert plain.promote and plain.pvalue > 0.05
    held = decide_promotion(
        scored(0.0495), ("3", scored(0.05)), "auto", comparison=noisy, alpha=0.05
    )
    assert (held.promote, held.tag, held.recommended) == (False, "rejected", False)
    assert held.reason.startswith("held back: scores better than champion v3 but not beyond")
    assert f"p = {held.pvalue:.2f}, promotion_alpha 0.05" in held.reason
    clear = _comparison([-0.002, -0.0021, -0.0019, -0.002, -0.0022, -0.0018])
    passed = decide_promotion(
        scored(0.048), ("3", scored(0.05)), "auto", comparison=clear, alpha=0.05
    )
    assert passed.promote and passed.pvalue < 0.01 and "p < 0.01" in passed.reason


def test_no_fresh_window_keeps_the_champion() -> None:
    """A champion selected on every window the challenger has: nothing can show it beaten."""
    comparison = _comparison([-0.01] * 6, since="2024-01-09")
    decision = decide_promotion(scored(0.04), ("3", scored(0.05)), "auto", comparison=comparison)
    assert (decision.promote, decision.sessions) == (False, 0)
    assert "no test window comes after champion v3's selection on 2024-01-09" in decision.reason


def test_manual_mode_carries_what_the_gate_would_have_decided() -> None:
    """Manual moves nothing, but says what auto would have done, with the numbers."""
    clear = _comparison([-0.002, -0.0021, -0.0019, -0.002, -0.0022, -0.0018])
    manual = decide_promotion(scored(0.048), ("3", scored(0.05)), "manual", comparison=clear)
    assert (manual.promote, manual.tag, manual.recommended) == (False, "manual", True)
    assert manual.recommendation.startswith("beats champion v3 on the 6 sessions")
    assert manual.reason.startswith("promotion is manual: the gate recommends promoting (beats")
    assert manual.difference == pytest.approx(-0.04) and manual.pvalue < 0.01
    worse = decide_promotion(
        scored(0.06), ("3", scored(0.05)), "manual", comparison=_comparison([0.01] * 6)
    )
    assert (worse.recommended, worse.tag) == (False, "manual")
    assert "the gate would not promote (does not beat champion v3" in worse.reason
    assert manual.reason.endswith("review and run `closecast promote`")
    assert manual.for_version("6").reason.endswith("review and run `closecast promote 6`")
    auto = decide_promotion(scored(0.048), ("3", scored(0.05)), "auto", comparison=clear)
    assert auto.for_version("6") == auto
