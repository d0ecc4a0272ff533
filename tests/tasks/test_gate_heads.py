"""The gate across heads: a HAR-head champion, an LSTM-head challenger and a point-head (spec 2)
champion are all scored on the challenger's test windows by the same score."""

import copy

import pandas as pd
import pytest

from closecast.core.config import TrainConfig, WindowConfig
from closecast.models.forecaster import Forecaster
from closecast.models.heads import fit_heads, use_head
from closecast.models.lstm import LSTMConfig
from closecast.tasks.modeling.evaluation import evaluate_model
from closecast.tasks.modeling.training import train_model
from closecast.tasks.modeling.windows import Dataset, build_windows
from closecast.tasks.registry.gate import decide_promotion, rescore_champion
from tests.fixtures import walk_frames


def _frames(n: int = 160) -> dict[str, pd.DataFrame]:
    """Two tickers of n business days of random-walk features with volatility that changes
    halfway; the derived ones read from WARM_UP rows more of prices, as calm as the first half."""
    return walk_frames(n, calm=0.008, stormy=0.02, range_share=0.5)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    frames = _frames()
    return build_windows(frames, WindowConfig(), frames["AAA"].index[-1].date())


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> Forecaster:
    config = TrainConfig(epochs=2, device="cpu", shrink_output=False)
    return train_model(dataset, LSTMConfig(hidden_size=8), config).forecaster


def _with_head(forecaster: Forecaster, head: str, dataset: Dataset) -> Forecaster:
    copied = copy.deepcopy(forecaster)
    scale = copied.intervals.scale  # type: ignore[union-attr]
    use_head(copied, head, fit_heads(copied, scale, dataset.train, dataset.validation))
    return copied


def test_a_har_champion_and_an_lstm_challenger_meet_on_the_same_windows_and_score(
    trained: Forecaster, dataset: Dataset
) -> None:
    """Re-scored on the challenger's windows, the champion's metrics are what evaluating it
    there gives; the gate compares the two test_interval_scores and says so."""
    champion = _with_head(trained, "har", dataset)
    challenger = _with_head(trained, "lstm", dataset)
    mine = evaluate_model(challenger, dataset.test).metrics
    theirs, problem = rescore_champion("4", champion, dataset.test, dataset.columns)
    assert problem == ""
    expected = evaluate_model(champion, dataset.test).metrics
    assert theirs["test_interval_score"] == pytest.approx(expected["test_interval_score"])
    # the same centre: only the widths differ, so the point metrics are the same
    assert theirs["test_rmse"] == pytest.approx(mine["test_rmse"])
    assert theirs["test_interval_score"] != pytest.approx(mine["test_interval_score"])
    decision = decide_promotion(mine, ("4", theirs), "auto")
    assert decision.compared == "test_interval_score"
    assert decision.promote == (mine["test_interval_score"] < theirs["test_interval_score"])


def test_a_point_head_champion_of_spec_2_is_scored_beside_a_distributional_challenger(
    trained: Forecaster, dataset: Dataset
) -> None:
    """A spec-2 champion (one output, intervals around its point) loads and is re-scored on the
    same windows with the same score as a spec-3 challenger."""
    point = train_model(
        dataset,
        LSTMConfig(hidden_size=8, distribution="none"),
        TrainConfig(epochs=2, device="cpu"),
    ).forecaster
    assert point.head is None and point.spec()["head"] is None
    theirs, problem = rescore_champion("2", point, dataset.test, dataset.columns)
    assert problem == ""
    assert theirs["test_interval_score"] == pytest.approx(
        evaluate_model(point, dataset.test).metrics["test_interval_score"]
    )
    mine = evaluate_model(trained, dataset.test).metrics
    decision = decide_promotion(mine, ("2", theirs), "auto")
    assert decision.compared == "test_interval_score"
