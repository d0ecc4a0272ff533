from datetime import UTC, datetime, timedelta

import pytest

from tasks.aliases import AliasMove, alias_at, discard_run_versions


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
    assert len({m.tag_key for m in history}) == 4
    assert alias_at(history, "champion", t0 - timedelta(seconds=1)) is None
    assert alias_at(history, "champion", t0 + timedelta(hours=1)) == "1"
    assert alias_at(history, "champion", t0 + timedelta(days=3)) == "2"
    assert alias_at(history, "champion", t0 + timedelta(days=6)) == "1"
    assert alias_at(history, "challenger", t0 + timedelta(days=6)) == "2"


def test_discard_run_versions_rejects_a_malformed_run_id() -> None:
    """The run id goes into a registry filter, so anything but 32 hex digits is refused."""
    with pytest.raises(ValueError, match="invalid run id"):
        discard_run_versions(None, "x' or name='y")  # type: ignore[arg-type]
