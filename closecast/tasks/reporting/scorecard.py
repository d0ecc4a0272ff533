"""The live scorecard: earlier predictions scored against the closes that came after them.

Each run reads the reports in `<home>/reports/`, scores every `ok` row whose
target_date now has a close, and merges those rows into
`<home>/reports/scorecard.csv` (one row per as_of and ticker, so scoring the
same reports again changes nothing). A row carries the report's 80% and 95%
bounds and whether the close fell inside them (`hit_80`, `hit_95`); a report
written before the forecasts had intervals leaves them empty. The rolling
realised RMSE of the last 20 sessions, the naive forecast's, and the realised
coverage of the intervals go to the run's MLflow metrics.
"""

import logging
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from closecast.core.statuses import OK
from closecast.models.forecaster import INTERVAL_COLUMNS
from closecast.tasks.data.store import write_atomic
from closecast.tasks.modeling.evaluation import LEVELS

logger = logging.getLogger(__name__)

SCORECARD_COLUMNS = [
    "as_of",
    "target_date",
    "ticker",
    "predicted_close",
    "actual_close",
    "error",
    "naive_error",
    "direction_hit",
    "model_version",
    *INTERVAL_COLUMNS,
    "hit_80",
    "hit_95",
]
HIT_COLUMNS = [f"hit_{level}" for level in LEVELS]
LIVE_SESSIONS = 20
_KEY = ["as_of", "ticker"]
# The columns a report must have to be scored (and read by `closecast status`).
REPORT_NEEDED = ("as_of", "target_date", "ticker", "last_close", "predicted_close", "status")


def _hits(values: pd.Series) -> pd.Series:
    """True/False (or "True"/"False" read back from a CSV), anything else empty (<NA>)."""
    text = values.astype(object).map(lambda v: str(v).strip().lower())
    return text.map({"true": True, "false": False}).astype("boolean")


def conform_scorecard(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with exactly SCORECARD_COLUMNS and their types; missing interval columns empty.

    Scorecards and reports written before the forecasts had intervals lack the
    bound and hit columns: their rows get NaN bounds and <NA> hits (not False).
    """
    table = table.reindex(columns=SCORECARD_COLUMNS)
    for column in INTERVAL_COLUMNS:
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(np.float64)
    for column in HIT_COLUMNS:
        table[column] = _hits(table[column])
    table["direction_hit"] = (
        table["direction_hit"].astype(object).map(lambda v: str(v).strip().lower() == "true")
    )
    return table.astype({"direction_hit": bool})


def scorecard_path(reports_dir: Path) -> Path:
    return reports_dir / "scorecard.csv"


class UnreadableReport(ValueError):
    """A `predictions_*.csv` that is no report; the message says why."""


def read_report(path: Path) -> pd.DataFrame:
    """One predictions report as the scorecard reads it: an empty cell stays "", not NaN.

    Raises:
        UnreadableReport: the file is no CSV text (binary, malformed, empty, a
            folder) or lacks a report's columns.
    """
    try:
        report = pd.read_csv(path, dtype={"model_version": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableReport(f"unreadable ({why})") from None
    missing = [c for c in REPORT_NEEDED if c not in report.columns]
    if missing:
        raise UnreadableReport(f"not a predictions report (missing {', '.join(missing)})")
    return report


def read_reports(reports_dir: Path, as_of: date) -> pd.DataFrame:
    """The ok rows of every report whose target_date is on or before `as_of`."""
    frames = []
    for path in sorted(reports_dir.glob("predictions_*.csv")):
        try:
            report = read_report(path)
        except UnreadableReport as exc:
            logger.warning("skipping report %s: %s", path.name, exc)
            continue
        frames.append(report[report["status"] == OK])
    if not frames:
        columns = [
            "as_of",
            "target_date",
            "ticker",
            "last_close",
            "predicted_close",
            "model_version",
        ]
        return pd.DataFrame(columns=columns)
    reports = pd.concat(frames, ignore_index=True)
    return reports[pd.to_datetime(reports["target_date"]) <= pd.Timestamp(as_of)]


def score_predictions(reports: pd.DataFrame, closes: dict[str, pd.Series]) -> pd.DataFrame:
    """Score report rows whose ticker has a close on its target_date.

    Args:
        reports: ok report rows (as_of, target_date, ticker, last_close,
            predicted_close, model_version).
        closes: per ticker, closes indexed by date (rows the run may see).

    Returns:
        SCORECARD_COLUMNS: error = predicted - actual, naive_error = last close
        - actual (the persistence forecast), direction_hit = the predicted move
        from the last close has the sign of the actual move, hit_X = lower_X ≤
        actual ≤ upper_X (empty where the report has no bounds).
    """
    known = pd.concat(
        [
            pd.DataFrame({"ticker": t, "when": s.index, "actual_close": s.to_numpy(np.float64)})
            for t, s in closes.items()
        ]
        or [pd.DataFrame({"ticker": [], "when": pd.to_datetime([]), "actual_close": []})],
        ignore_index=True,
    )
    when = pd.to_datetime(reports["target_date"]).astype("datetime64[ns]")
    keyed = reports.assign(ticker=reports["ticker"].astype(str), when=when)
    known = known.astype({"ticker": str, "when": "datetime64[ns]"})
    scored = keyed.merge(known, on=["ticker", "when"], how="inner")
    predicted = scored["predicted_close"].astype(np.float64)
    last = scored["last_close"].astype(np.float64)
    actual = scored["actual_close"].astype(np.float64)
    # Reports are read as text (keep_default_na=False): an empty bound is "", and an
    # old report has no bound columns at all.
    bounds = {
        c: pd.to_numeric(scored[c], errors="coerce")
        if c in scored
        else pd.Series(np.nan, scored.index)
        for c in INTERVAL_COLUMNS
    }
    hits = {}
    for level in LEVELS:
        lower, upper = bounds[f"lower_{level}"], bounds[f"upper_{level}"]
        hit = pd.Series((lower <= actual) & (actual <= upper), dtype="boolean")
        hits[f"hit_{level}"] = hit.mask(lower.isna() | upper.isna())
    table = pd.DataFrame(
        {
            "as_of": scored["as_of"].astype(str),
            "target_date": scored["target_date"].astype(str),
            "ticker": scored["ticker"].astype(str),
            "predicted_close": predicted,
            "actual_close": scored["actual_close"],
            "error": predicted - scored["actual_close"],
            "naive_error": last - scored["actual_close"],
            "direction_hit": np.sign(predicted - last) == np.sign(scored["actual_close"] - last),
            "model_version": scored["model_version"].astype(str),
            **bounds,
            **hits,
        }
    )
    return conform_scorecard(table).reset_index(drop=True)


def merge_scorecard(existing: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    """Existing rows updated by newly scored ones: one row per (as_of, ticker), sorted."""
    parts = [conform_scorecard(t) for t in (existing, scored) if len(t)]
    if not parts:
        return conform_scorecard(existing)
    merged = pd.concat(parts, ignore_index=True)
    merged = merged.drop_duplicates(subset=_KEY, keep="last")
    return conform_scorecard(merged.sort_values(["as_of", "ticker"], ignore_index=True))


def live_metrics(
    scorecard: pd.DataFrame, as_of: date, sessions: int = LIVE_SESSIONS
) -> dict[str, float]:
    """Realised RMSE of the model and of naive, and interval coverage, over the last sessions.

    Errors are relative to the last close, like the run-level test metrics,
    so no ticker dominates by its price level. Coverage (`live_coverage_80_Nd`,
    `live_coverage_95_Nd`) is the share of hits among the window's rows that
    have intervals (`live_interval_rows_Nd` of them); it is left out when none
    has. Empty when nothing is scored.
    """
    scorecard = conform_scorecard(scorecard)
    seen = scorecard[pd.to_datetime(scorecard["target_date"]) <= pd.Timestamp(as_of)]
    recent = sorted(seen["target_date"].unique())[-sessions:]
    window = seen[seen["target_date"].isin(recent)]
    if window.empty:
        return {}
    last_close = window["actual_close"] + window["naive_error"]
    relative = window["error"] / last_close
    naive_relative = window["naive_error"] / last_close
    suffix = f"{sessions}d"
    metrics = {
        f"live_rmse_{suffix}": float(np.sqrt(np.mean(np.square(relative)))),
        f"live_naive_rmse_{suffix}": float(np.sqrt(np.mean(np.square(naive_relative)))),
        f"live_directional_accuracy_{suffix}": float(window["direction_hit"].astype(bool).mean()),
        f"live_sessions_{suffix}": float(len(recent)),
    }
    with_intervals = window.dropna(subset=HIT_COLUMNS)
    if len(with_intervals):
        for level in LEVELS:
            hits = with_intervals[f"hit_{level}"].astype(bool)
            metrics[f"live_coverage_{level}_{suffix}"] = float(hits.mean())
        metrics[f"live_interval_rows_{suffix}"] = float(len(with_intervals))
    return metrics


def read_scorecard(path: Path) -> pd.DataFrame:
    """The scorecard on disk (one written before intervals gains empty ones), or an empty one."""
    if not path.exists():
        return conform_scorecard(pd.DataFrame(columns=SCORECARD_COLUMNS))
    text = {c: str for c in ("as_of", "target_date", "model_version", *HIT_COLUMNS)}
    return conform_scorecard(pd.read_csv(path, dtype=text))


def update_scorecard(
    reports_dir: Path, frames: dict[str, pd.DataFrame], as_of: date
) -> tuple[pd.DataFrame, int]:
    """Score reports against `frames`' closes, merge into scorecard.csv (atomically).

    Returns:
        The whole scorecard and how many of its rows are new.
    """
    closes = {t: f["close"] for t, f in frames.items()}
    scored = score_predictions(read_reports(reports_dir, as_of), closes)
    path = scorecard_path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(reports_dir / ".scorecard.lock"), timeout=120):
        existing = read_scorecard(path)
        table = merge_scorecard(existing, scored)
        if len(scored):
            write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    return table, len(table) - len(existing)
