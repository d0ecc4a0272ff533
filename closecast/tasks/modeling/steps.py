"""The modeling stage's Prefect tasks: features, windows, training, evaluation, prediction.

Each task wraps the plain function of the same name in its stage module
(`windows.build_windows`, `training.train_model`, ...) and adds what only
Prefect does: run names, log lines, time limits. The logic, and its tests,
live in those modules.
"""

from collections.abc import Callable
from datetime import date

import pandas as pd
from mlflow.pyfunc import PyFuncModel
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from closecast.core.config import TrainConfig, WindowConfig
from closecast.core.errors import PipelineError
from closecast.core.progress import Advance, progress
from closecast.models.forecaster import Forecaster
from closecast.models.lstm import LSTMConfig
from closecast.models.training import TrainingDiverged
from closecast.tasks.modeling import evaluation as evaluation_module
from closecast.tasks.modeling import features as features_module
from closecast.tasks.modeling import prediction, training, windows
from closecast.tasks.modeling.evaluation import Evaluation
from closecast.tasks.modeling.prediction import LatestInputs
from closecast.tasks.modeling.training import TrainedModel
from closecast.tasks.modeling.windows import Dataset, WindowSet


@task(name="build-features", cache_policy=NO_CACHE)
def build_features(frames: dict[str, pd.DataFrame], features: list[str]) -> dict[str, pd.DataFrame]:
    """Feature frames for every ticker."""
    return features_module.build_features(frames, features)


@task(name="build-windows", cache_policy=NO_CACHE)
def build_windows(features: dict[str, pd.DataFrame], config: WindowConfig, as_of: date) -> Dataset:
    """Windows for training, evaluation and tomorrow's prediction."""
    return windows.build_windows(features, config, as_of)


def _epoch_logger(epochs: int, advance: Advance) -> Callable[[int, dict[str, float]], None]:
    """One log line per epoch, and a step of the terminal's bar (which early stopping ends
    short of `epochs`)."""
    logger = get_run_logger()

    def log(epoch: int, metrics: dict[str, float]) -> None:
        advance()
        logger.info(
            "epoch %d/%d  train_loss %.5f  val_loss %.5f",
            epoch,
            epochs,
            metrics["train_loss"],
            metrics["val_loss"],
        )

    return log


@task(name="train-model", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def train_model(dataset: Dataset, lstm: LSTMConfig, config: TrainConfig) -> TrainedModel:
    """Train the global LSTM, one log line per epoch.

    Raises:
        PipelineError: when the loss diverges; nothing is trained, so nothing is registered.
    """
    try:
        with progress(config.epochs, "train", unit="epochs", lines=0) as advance:
            trained = training.train_model(
                dataset, lstm, config, _epoch_logger(config.epochs, advance)
            )
    except TrainingDiverged as exc:
        raise PipelineError(f"training diverged: {exc}") from exc
    get_run_logger().info(
        "trained %d epochs on %d windows (%s, batch %d, learning rate %.2g, patience %s) "
        "in %.1fs; best val loss %.5f at epoch %d; output scale %.3f",
        trained.fit.epochs_trained,
        len(dataset.train),
        trained.device,
        trained.fit.batch_size,
        trained.fit.learning_rate,
        trained.fit.patience,
        trained.fit.train_seconds,
        trained.fit.best_val_loss,
        trained.fit.best_epoch,
        trained.fit.output_scale,
    )
    return trained


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model(forecaster: Forecaster, test: WindowSet) -> Evaluation:
    """Score the model and the naive forecast on the test span."""
    evaluation = evaluation_module.evaluate_model(forecaster, test)
    m = evaluation.metrics
    get_run_logger().info(
        "test rmse %.5f vs naive %.5f (skill %+.4f, p %.2f), directional accuracy %.3f; "
        "coverage 80%% %.1f%%, 95%% %.1f%%; interval score 95%% %.5f vs EWMA %.5f",
        m["test_rmse"],
        m["naive_rmse"],
        m["skill"],
        m["skill_pvalue"],
        m["test_directional_accuracy"],
        100 * m["coverage_80"],
        100 * m["coverage_95"],
        m["interval_score_95"],
        m["baseline_interval_score_95"],
    )
    return evaluation


@task(name="latest-inputs", cache_policy=NO_CACHE, task_run_name="latest-inputs as_of={as_of}")
def latest_inputs(
    frames: dict[str, pd.DataFrame], tickers: list[str], as_of: date, window: int
) -> LatestInputs:
    """The rows the model predicts from, one window per ready ticker."""
    return prediction.latest_inputs(frames, tickers, as_of, window)


@task(name="predict-next", cache_policy=NO_CACHE)
def predict_next(model: Forecaster | PyFuncModel, rows: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes, one row per ticker with a status (see `prediction.predict_next`)."""
    return prediction.predict_next(model, rows)
