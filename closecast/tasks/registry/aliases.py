"""The alias audit: move `champion` and `challenger`, record each move, answer "when".

Each alias keeps its moves in registered-model tags a reviewer can read on
the registry page: `<alias>_history`, a JSON list of the newest moves (at,
version, previous, by, reason), capped to fit MLflow's 5000-character tag
column, and the latest move spelled out as `<alias>_since`, `<alias>_set_by`
and `<alias>_reason`. One list per alias, so nightly `challenger` moves never
push `champion` moves out. Registries written before this layout hold one
`alias_move.<ms>.<alias>.v<N>` tag per move; those are still read (and left
in place), merged by time, so `alias_history` answers "what was champion on
date X" from both. `rollback_registration` puts the aliases back, and
deletes the run's versions, when a run fails after it registered.
"""

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from closecast.core.config import CHALLENGER, CHAMPION, MODEL_NAME
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.gate import GATED_METRICS

ALIASES = (CHAMPION, CHALLENGER)
LEGACY_PREFIX = "alias_move."  # one tag per move, as registries before the capped history hold
MAX_TAG_VALUE = 5000  # registered_model_tags.value is VARCHAR(5000) in MLflow's SQL stores
HISTORY_REASON = 200  # characters of a reason kept in the history (the `_reason` tag has it all)

logger = logging.getLogger(__name__)


class UnknownVersion(LookupError):
    """A registry version that does not exist (or a name that is not a version number)."""


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: the version it pointed at before and after, by whom, when."""

    at: datetime
    alias: str
    version: str | None  # None: the alias was removed
    previous: str | None
    by: str
    reason: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "at": self.at.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> "AliasMove":
        data = json.loads(text)
        return cls(**{**data, "at": datetime.fromisoformat(data["at"])})

    def entry(self) -> dict[str, str | None]:
        """This move as a row of its alias's `_history` tag (the alias is the tag's)."""
        reason = self.reason
        if len(reason) > HISTORY_REASON:
            reason = reason[: HISTORY_REASON - 1] + "…"
        return {
            "at": self.at.isoformat(),
            "version": self.version,
            "previous": self.previous,
            "by": self.by,
            "reason": reason,
        }

    @classmethod
    def from_entry(cls, alias: str, entry: dict[str, str | None]) -> "AliasMove":
        return cls(
            at=datetime.fromisoformat(str(entry["at"])),
            alias=alias,
            version=entry["version"],
            previous=entry["previous"],
            by=str(entry["by"]),
            reason=str(entry["reason"]),
        )


def capped_history(entries: list[dict[str, str | None]], limit: int = MAX_TAG_VALUE) -> str:
    """The newest `entries` (oldest first) as JSON of at most `limit` characters."""
    kept = list(entries)
    text = json.dumps(kept, ensure_ascii=False)
    while len(text) > limit and kept:
        kept.pop(0)
        text = json.dumps(kept, ensure_ascii=False)
    return text


def _history_tags(tags: dict[str, str], move: AliasMove) -> dict[str, str]:
    """The alias's tags once `move` is recorded: its capped history and its latest move."""
    key = f"{move.alias}_history"
    entries = [*json.loads(tags.get(key, "[]")), move.entry()]
    return {
        key: capped_history(entries),
        f"{move.alias}_since": move.at.isoformat(timespec="seconds"),
        f"{move.alias}_set_by": move.by,
        f"{move.alias}_reason": move.reason or "-",
    }


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def current_aliases(client: MlflowClient) -> dict[str, str]:
    """alias -> version of the registered model; empty when it is not registered yet.

    Any other registry error (unreachable server) propagates: a missing
    answer must never read as "there is no champion".
    """
    try:
        return {a: str(v) for a, v in client.get_registered_model(MODEL_NAME).aliases.items()}
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise


def alias_version(client: MlflowClient, alias: str) -> str | None:
    """The version `alias` points at, or None."""
    return current_aliases(client).get(alias)


def move_alias(
    client: MlflowClient, alias: str, version: str | None, by: str, reason: str
) -> AliasMove:
    """Point `alias` at `version` (None removes it) and record the move in the history."""
    previous = alias_version(client, alias)
    if version is None:
        client.delete_registered_model_alias(MODEL_NAME, alias)
    else:
        client.set_registered_model_alias(MODEL_NAME, alias, version)
    move = AliasMove(datetime.now(UTC), alias, version, previous, by[:300], reason[:1000])
    tags = client.get_registered_model(MODEL_NAME).tags
    for key, value in _history_tags(tags, move).items():
        client.set_registered_model_tag(MODEL_NAME, key, value)
    return move


def discard_run_versions(client: MlflowClient, run_id: str) -> list[str]:
    """Delete every version a (failed) run registered; returns their numbers."""
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    found = client.search_model_versions(f"name='{MODEL_NAME}' and tags.run_id='{run_id}'")
    versions = sorted(str(v.version) for v in found)
    for version in versions:
        client.delete_model_version(MODEL_NAME, version)
    return versions


@contextmanager
def rollback_registration(tracking_uri: str, run_id: str) -> Iterator[None]:
    """If the block fails, delete what `run_id` registered and put the aliases back.

    The original exception always propagates; a failing clean-up is logged,
    never raised in its place.
    """
    client = configure_mlflow(tracking_uri)
    before = {alias: alias_version(client, alias) for alias in (CHAMPION, CHALLENGER)}
    try:
        yield
    except BaseException:
        try:
            discarded = discard_run_versions(client, run_id)
            for alias, version in before.items():
                if alias_version(client, alias) != version:
                    by = f"rollback of failed run {run_id}"
                    move_alias(client, alias, version, by, "restoring the alias the run had moved")
            if discarded:
                logger.warning("run failed: discarded %s v%s", MODEL_NAME, ", v".join(discarded))
        except Exception as exc:  # the run's own error is the one to report
            logger.error("could not roll back the registry after the failure: %s", exc)
        raise


def alias_history(client: MlflowClient) -> list[AliasMove]:
    """Every recorded alias move, oldest first: the capped histories and any old-layout tags."""
    try:
        tags = client.get_registered_model(MODEL_NAME).tags
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    moves = [AliasMove.from_json(v) for k, v in tags.items() if k.startswith(LEGACY_PREFIX)]
    for alias in ALIASES:
        entries = json.loads(tags.get(f"{alias}_history", "[]"))
        moves += [AliasMove.from_entry(alias, entry) for entry in entries]
    return sorted(moves, key=lambda m: m.at)


def alias_at(history: list[AliasMove], alias: str, when: datetime) -> str | None:
    """The version `alias` pointed at, at time `when`, by the recorded history."""
    version = None
    for move in history:
        if move.alias == alias and move.at <= when:
            version = move.version
    return version


def promote_version(tracking_uri: str, version: str, by: str, reason: str) -> AliasMove:
    """Point `champion` at an existing `version` (a manual promotion, or a rollback).

    Raises:
        UnknownVersion: when `version` is not a number or no such version exists.
    """
    if not version.isdigit():
        raise UnknownVersion(f"invalid version {version!r}: expected a version number")
    client = configure_mlflow(tracking_uri)
    try:
        client.get_model_version(MODEL_NAME, version)
    except MlflowException as exc:
        if _missing(exc):
            raise UnknownVersion(f"version {version} of {MODEL_NAME} does not exist") from None
        raise
    return move_alias(client, CHAMPION, version, by, reason)


def version_table(client: MlflowClient) -> pd.DataFrame:
    """One row per registered version, newest first: what `closecast models` prints."""
    columns = ["version", "aliases", "created", *GATED_METRICS, "promotion"]
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(current_aliases(client).items()):
        aliases.setdefault(version, []).append(alias)
    rows = [
        {
            "version": int(v.version),
            "aliases": ",".join(aliases.get(str(v.version), [])),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
            **{k: v.tags.get(k, "") for k in (*GATED_METRICS, "promotion")},
        }
        for v in client.search_model_versions(f"name='{MODEL_NAME}'")
    ]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("version", ascending=False, ignore_index=True)
