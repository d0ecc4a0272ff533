import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from closecast.core.config import MODEL_NAME
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.aliases import (
    AliasMove,
    alias_at,
    alias_history,
    discard_run_versions,
    move_alias,
)


def test_alias_move_round_trips_and_answers_what_was_champion() -> None:
    """The recorded history says which version held an alias at any moment."""
    t0 = datetime(2024, 1, 2, 23, tzinfo=UTC)
    history = [
        AliasMove(t0, "champion", "1", None, "nightly run a", "first version"),
        AliasMove(t0 + timedelta(days=1), "challenger", "2", "1", "nightly run b", ""),
        AliasMove(t0 + timedelta(days=1, seconds=1), "champion", "2", "1", "nightly run b", ""),
        AliasMove(t0 + timedelta(days=5), "champion", "1", "2", "closecast promote by ann", ""),
    ]
    assert [AliasMove.from_json(m.to_json()) for m in history] == history
    assert alias_at(history, "champion", t0 - timedelta(seconds=1)) is None
    assert alias_at(history, "champion", t0 + timedelta(hours=1)) == "1"
    assert alias_at(history, "champion", t0 + timedelta(days=3)) == "2"
    assert alias_at(history, "champion", t0 + timedelta(days=6)) == "1"
    assert alias_at(history, "challenger", t0 + timedelta(days=6)) == "2"


def test_discard_run_versions_rejects_a_malformed_run_id() -> None:
    """The run id goes into a registry filter, so anything but 32 hex digits is refused."""
    with pytest.raises(ValueError, match="invalid run id"):
        discard_run_versions(None, "x' or name='y")  # type: ignore[arg-type]


FIELDS = ("since", "set_by", "reason")


def _registry(home: Path) -> MlflowClient:
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    for _ in range(2):
        client.create_model_version(MODEL_NAME, source=str(home / "model"))
    return client


def _legacy_tag(client: MlflowClient, move: AliasMove) -> None:
    """A move as the layout before the capped history recorded it: one tag per move."""
    stamp = int(move.at.timestamp() * 1000)
    key = f"alias_move.{stamp:013d}.{move.alias}.v{move.version or 'none'}"
    client.set_registered_model_tag(MODEL_NAME, key, move.to_json())


# Nights of a challenger and a champion move, alternating between two versions: the NIGHTS
# moves to each (~300-450 characters apiece, reasons cut to 200) overflow its 5000-character
# column. A dozen registry calls per move.
NIGHTS = 20


@pytest.mark.slow
def test_history_of_many_moves_stays_bounded_and_readable(mlflow_home: Path) -> None:
    """40 moves with long reasons: the registered model keeps a fixed set of short tags (no
    JSON to crowd its page), each version its own moves as JSON within MLflow's 5000-char
    column, the newest kept, and the latest move spelled out in plain tags."""
    client = _registry(mlflow_home)
    for i in range(NIGHTS):
        version = "1" if i % 2 else "2"
        move_alias(client, "challenger", version, f"nightly run {i:032x}", "newly trained version")
        move_alias(client, "champion", version, f"nightly run {i:032x}", f"reason {i} " + "x" * 900)
    tags = client.get_registered_model(MODEL_NAME).tags
    assert sorted(tags) == sorted(
        ["champion"]
        + [f"{alias}_{field}" for alias in ("champion", "challenger") for field in FIELDS]
    )
    assert tags["champion"] == "v1"
    assert max(len(v) for v in tags.values()) <= 1000
    kept = json.loads(client.get_model_version(MODEL_NAME, "1").tags["alias_moves"])
    assert all(len(v.tags["alias_moves"]) <= 5000 for v in client.search_model_versions(""))
    assert 5 <= len(kept) < NIGHTS  # of the NIGHTS moves to v1, the newest that fit
    last = NIGHTS - 1
    assert set(kept[-1]) == {"model", "alias", "at", "version", "previous", "by", "reason"}
    assert kept[-1]["by"] == f"nightly run {last:032x}" and kept[-1]["version"] == "1"
    assert tags["champion_set_by"] == f"nightly run {last:032x}"
    assert tags["champion_reason"].startswith(f"reason {last} ")
    assert datetime.fromisoformat(tags["champion_since"]) <= datetime.now(UTC)
    history = alias_history(client)
    assert all(a.at <= b.at for a, b in itertools.pairwise(history))
    assert history[-1].alias == "champion" and history[-1].reason.startswith(f"reason {last} ")
    assert alias_at(history, "champion", datetime.now(UTC)) == "1"


def test_history_recorded_by_the_old_layout_is_still_read(mlflow_home: Path) -> None:
    """Old `alias_move.*` and `<alias>_history` tags and new moves merge into one history, by
    time; `alias_at` answers from all; the next move takes the old JSON off the model page onto
    the versions, losing no move, and puts `champion` first (the Registered Models list shows
    a model's first tag)."""
    client = _registry(mlflow_home)
    t0 = datetime(2024, 1, 2, 23, tzinfo=UTC)
    old = [
        AliasMove(t0, "challenger", "1", None, "nightly run a", "newly trained version"),
        AliasMove(t0, "champion", "1", None, "nightly run a", "first version"),
    ]
    for move in old:
        _legacy_tag(client, move)
        client.set_registered_model_alias(MODEL_NAME, move.alias, "1")
    later = AliasMove(t0 + timedelta(hours=1), "challenger", "1", "1", "nightly run b", "")
    entry = {k: v for k, v in later.entry().items() if k not in ("model", "alias")}
    client.set_registered_model_tag(MODEL_NAME, "challenger_history", json.dumps([entry]))
    old.append(later)
    new = move_alias(client, "champion", "2", "closecast promote by ann", "v1 drifts")
    history = alias_history(client)
    assert history == [*old, new]
    assert alias_at(history, "champion", t0 + timedelta(days=1)) == "1"
    assert alias_at(history, "champion", datetime.now(UTC)) == "2"
    tags = client.get_registered_model(MODEL_NAME).tags
    assert not [k for k in tags if "alias_move" in k or k.endswith("_history")]
    assert next(iter(tags)) == "champion" and tags["champion"] == "v2"
    assert len(json.loads(client.get_model_version(MODEL_NAME, "1").tags["alias_moves"])) == 3
