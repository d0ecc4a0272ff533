"""Alias moves made outside closecast are recorded; cards and `promotion` tags stay true."""

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from closecast.cli.app import main
from closecast.core.config import MODEL_NAME
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.aliases import AliasMove, alias_history, move_alias
from closecast.tasks.registry.roles import (
    OUTSIDE,
    champion_spans,
    promotion_text,
    restate_card,
    status_line,
)

T0 = datetime(2018, 11, 1, 23, tzinfo=UTC)
CARD = "Rejected: does not beat champion v1.\n\n**Head:** lstm\n\n| metric | v2 |"


def _move(hours: int, version: str | None, previous: str | None, by: str) -> AliasMove:
    return AliasMove(T0 + timedelta(hours=hours), "champion", version, previous, by, "why")


def test_spans_promotion_tag_and_first_line_read_as_history() -> None:
    """v1 champion by the gate, replaced by v2 from the UI, back to v1 by a person: each
    version's spans, its `promotion` tag and its card's first line say so."""
    history = [
        _move(0, "1", None, "nightly run a"),
        AliasMove(T0, "challenger", "1", None, "nightly run a", ""),  # not champion: ignored
        _move(24, "2", "1", OUTSIDE),
        _move(48, "1", "2", "closecast promote by ann"),
    ]
    one, two = champion_spans("1", history), champion_spans("2", history)
    assert [(s.start, s.end, s.successor) for s in one] == [
        (T0, T0 + timedelta(hours=24), "2"),
        (T0 + timedelta(hours=48), None, None),
    ]
    assert [(s.start, s.end, s.successor, s.by) for s in two] == [
        (T0 + timedelta(hours=24), T0 + timedelta(hours=48), "1", OUTSIDE)
    ]
    assert promotion_text("champion", one[:1]) == (
        "champion; champion 2018-11-01 23:00 UTC – 2018-11-02 23:00 UTC (superseded by v2)"
    )
    assert promotion_text("champion", champion_spans("1", history[:2])) == "champion"
    assert promotion_text("rejected", two).startswith("rejected; champion 2018-11-02 23:00 UTC")
    assert promotion_text("manual", []) == "manual"
    assert status_line(two) == (
        "Champion from 2018-11-02 23:00 UTC to 2018-11-03 23:00 UTC, superseded by v1."
    )
    assert status_line(champion_spans("1", history[:2])) is None  # the gate's line holds
    assert status_line(champion_spans("2", history[:3])) == (
        f"Champion since 2018-11-02 23:00 UTC (when closecast noticed it), moved {OUTSIDE}."
    )
    assert status_line(one).startswith("Champion since 2018-11-03 23:00 UTC, moved by closecast")


def test_restating_a_card_keeps_the_gate_line_and_is_reversible() -> None:
    """The new first line goes on top, the gate's after it; restating again replaces only
    the top line; None restores the card as the gate wrote it."""
    once = restate_card(CARD, "Champion since X.")
    assert once.split("\n")[:3] == [
        "Champion since X.",
        "",
        "At registration: Rejected: does not beat champion v1.",
    ]
    twice = restate_card(once, "Champion from X to Y, superseded by v3.")
    assert twice.split("\n")[0] == "Champion from X to Y, superseded by v3."
    assert twice.count("At registration:") == 1 and twice.endswith(CARD.split("\n", 1)[1])
    assert restate_card(twice, None) == CARD


def _two_versions(home: Path) -> MlflowClient:
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    for version, promotion in (("1", "champion"), ("2", "rejected")):
        client.create_model_version(
            MODEL_NAME,
            source=str(home / "model"),
            tags={"promotion": promotion},
            description=f"{promotion.title()}: the gate's line for v{version}.\n\n| table |",
        )
    move_alias(client, "champion", "1", "nightly run a", "first version")
    move_alias(client, "challenger", "2", "nightly run b", "newly trained version")
    return client


@pytest.mark.slow  # status opens the Prefect API
def test_a_champion_moved_in_the_mlflow_ui_is_recorded_by_the_next_command(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The UI's alias editor moves champion to v2 (MLflow records nothing): `status` reports
    v2 since it was noticed, not v1's time; the history, the tags, both cards and both
    `promotion` tags say what happened, and a second command records nothing twice."""
    client = _two_versions(mlflow_home)
    old_since = client.get_registered_model(MODEL_NAME).tags["champion_since"]
    time.sleep(1.1)  # the since tags have whole seconds
    before = datetime.now(UTC).replace(microsecond=0)
    client.set_registered_model_alias(MODEL_NAME, "champion", "2")  # what the UI's pencil does

    main(["status", "--home", str(mlflow_home), "--json"])
    health = json.loads(capsys.readouterr().out)
    assert health["champion_version"] == "2"
    assert health["champion_since"] != old_since
    assert datetime.fromisoformat(health["champion_since"]) >= before

    tags = client.get_registered_model(MODEL_NAME).tags
    assert tags["champion"] == "v2" and tags["champion_set_by"] == OUTSIDE
    assert tags["champion_since"] == health["champion_since"]
    assert "v2, not at v1 as recorded" in tags["champion_reason"]
    two, one = (client.get_model_version(MODEL_NAME, v) for v in ("2", "1"))
    assert two.description.startswith("Champion since ")
    assert "At registration: Rejected: the gate's line for v2." in two.description
    assert one.description.startswith("Champion from ") and ", superseded by v2." in one.description
    assert two.tags["promotion"].startswith("rejected; champion since ")
    assert one.tags["promotion"].startswith("champion; champion ")
    assert one.tags["promotion"].endswith("(superseded by v2)")

    assert main(["models", "--history", "--home", str(mlflow_home)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and f"v1 -> v2  by {OUTSIDE}" in lines[-1]
    assert len([m for m in alias_history(client) if m.alias == "champion"]) == 2
    assert main(["models", "--home", str(mlflow_home)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert rows[0].split()[:2] == ["2", "challenger,champion"]
    assert rows[1].split()[0] == "1" and "champion; champion 20" in rows[1]

    assert main(["promote", "1", "--home", str(mlflow_home), "--reason", "v2 drifts"]) == 0
    capsys.readouterr()
    one = client.get_model_version(MODEL_NAME, "1")
    assert (
        one.description.startswith("Champion since ")
        and "closecast promote by" in (one.description.split("\n")[0])
    )
    assert client.get_model_version(MODEL_NAME, "2").description.startswith("Champion from ")
    assert [m.by for m in alias_history(client) if m.alias == "champion"][-1].startswith(
        "closecast promote by"
    )


def test_an_alias_removed_outside_is_recorded_and_copies_keep_their_own_moves(
    mlflow_home: Path,
) -> None:
    """Removing challenger in the UI is a recorded move to none; a version copied into
    another model (the UI's "Promote model") carries the tags of its source, and the moves in
    them are not the copy's."""
    from closecast.tasks.registry.aliases import reconcile_aliases

    client = _two_versions(mlflow_home)
    client.delete_registered_model_alias(MODEL_NAME, "challenger")
    found = reconcile_aliases(client)
    assert [(m.alias, m.previous, m.version, m.by) for m in found] == [
        ("challenger", "2", None, OUTSIDE)
    ]
    assert reconcile_aliases(client) == []  # recorded: nothing new the second time
    client.copy_model_version(f"models:/{MODEL_NAME}/1", "elsewhere")
    assert alias_history(client, "elsewhere") == []
    assert reconcile_aliases(client, "elsewhere") == []
