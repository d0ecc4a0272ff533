"""The alias audit: move `champion` and `challenger`, record each move, answer "when".

Each move is kept on the version it pointed the alias at (or, for a removed
alias, the version it left): the version tag `alias_moves`, a JSON list
(alias, at, version, previous, by, reason) that fits MLflow's
5000-character tag column. The registered model keeps only short tags a
reviewer reads on the registry pages: `champion` (`v5`), and the latest
move of each alias spelled out as `<alias>_since`, `<alias>_set_by` and
`<alias>_reason`, so the model page is not crowded by JSON. Registries
written before this layout hold `<alias>_history` JSON tags, or one
`alias_move.<ms>.<alias>.v<N>` tag per move, on the registered model; those
are still read (and left in place), merged by time, so `alias_history`
answers "what was champion on date X" from all of them.

MLflow records neither when nor by whom an alias was set, so a move made
outside closecast (the MLflow UI's alias editor, another client) is found
by `reconcile_aliases`, which every closecast command that touches the
registry runs first: the alias's current version differs from the last
recorded move, and the move is recorded as made outside closecast, at the
time it was noticed. `rollback_registration` puts the aliases back, and
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
from closecast.tasks.mlflow.auth import refusal_status
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.gate import GATED_METRICS
from closecast.tasks.registry.roles import OUTSIDE, update_roles

ALIASES = (CHAMPION, CHALLENGER)
MOVES_TAG = "alias_moves"  # on a version: the moves that pointed an alias at it, or away from it
LEGACY_PREFIX = "alias_move."  # one tag per move, as registries before the capped history hold
MAX_TAG_VALUE = 5000  # the tag value columns are VARCHAR(5000) in MLflow's SQL stores
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

    @property
    def holder(self) -> str | None:
        """The version whose `alias_moves` tag keeps this move."""
        return self.version or self.previous

    def entry(self, model: str = MODEL_NAME) -> dict[str, str | None]:
        """This move of `model`'s alias as a row of a history tag, its reason cut to
        HISTORY_REASON. The row names the model: a version copied into another model (the
        MLflow UI's "Promote model") carries its tags, and those moves are not the copy's."""
        reason = self.reason
        if len(reason) > HISTORY_REASON:
            reason = reason[: HISTORY_REASON - 1] + "…"
        return {
            "model": model,
            "alias": self.alias,
            "at": self.at.isoformat(),
            "version": self.version,
            "previous": self.previous,
            "by": self.by,
            "reason": reason,
        }

    @classmethod
    def from_entry(cls, alias: str, entry: dict[str, str | None]) -> "AliasMove":
        """A row of a history tag; `alias` for the rows of an `<alias>_history` tag, which
        do not name it."""
        return cls(
            at=datetime.fromisoformat(str(entry["at"])),
            alias=str(entry.get("alias") or alias),
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


def latest_tags(move: AliasMove) -> dict[str, str]:
    """The registered model's short tags once `move` is recorded: its latest move spelled out,
    and for `champion` the version, so the registry list shows it without a click."""
    tags = {
        f"{move.alias}_since": move.at.isoformat(timespec="seconds"),
        f"{move.alias}_set_by": move.by,
        f"{move.alias}_reason": move.reason or "-",
    }
    if move.alias == CHAMPION:
        tags[CHAMPION] = f"v{move.version}" if move.version else "none"
    return tags


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def current_aliases(client: MlflowClient, model: str = MODEL_NAME) -> dict[str, str]:
    """alias -> version of the registered model; empty when it is not registered yet.

    Any other registry error (unreachable server) propagates: a missing
    answer must never read as "there is no champion".
    """
    try:
        return {a: str(v) for a, v in client.get_registered_model(model).aliases.items()}
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise


def alias_version(client: MlflowClient, alias: str, model: str = MODEL_NAME) -> str | None:
    """The version `alias` points at, or None."""
    return current_aliases(client, model).get(alias)


def record_move(client: MlflowClient, move: AliasMove, model: str = MODEL_NAME) -> None:
    """Write `move` to the history: its version's `alias_moves` tag and the model's short tags."""
    if move.holder is not None:
        tags = client.get_model_version(model, move.holder).tags
        entries = [*json.loads(tags.get(MOVES_TAG, "[]")), move.entry(model)]
        client.set_model_version_tag(model, move.holder, MOVES_TAG, capped_history(entries))
    for key, value in latest_tags(move).items():
        client.set_registered_model_tag(model, key, value)
    tidy_model_tags(client, model)


def tidy_model_tags(client: MlflowClient, model: str = MODEL_NAME) -> None:
    """Keep the registered model's tags short, `champion` first.

    The Registered Models list shows a model's first tag (MLflow keeps them in
    the order they were first set), so `champion` goes first. The older
    layouts' JSON history tags move onto the versions they name (written there
    before they are deleted here, so a failure in between duplicates moves,
    which `alias_history` merges, and loses none); a move of a version deleted
    since is dropped with it.
    """
    tags = client.get_registered_model(model).tags
    legacy = [k for k in tags if k.startswith(LEGACY_PREFIX) or k.endswith("_history")]
    if not legacy and (CHAMPION not in tags or next(iter(tags)) == CHAMPION):
        return
    if legacy:
        moved: dict[str, list[dict[str, str | None]]] = {}
        for move in _tag_moves(tags):
            if move.holder is not None:
                moved.setdefault(move.holder, []).append(move.entry(model))
        for version in client.search_model_versions(f"name='{model}'"):
            if entries := moved.get(str(version.version)):
                kept = json.loads(version.tags.get(MOVES_TAG, "[]"))
                merged = sorted(_unique(kept + entries), key=lambda e: str(e["at"]))
                client.set_model_version_tag(
                    model, version.version, MOVES_TAG, capped_history(merged)
                )
    short = {k: v for k, v in tags.items() if k not in legacy}
    for key in tags:
        client.delete_registered_model_tag(model, key)
    for key in sorted(short, key=lambda k: k != CHAMPION):  # champion first, the rest in order
        client.set_registered_model_tag(model, key, short[key])


def _unique(entries: list[dict[str, str | None]]) -> list[dict[str, str | None]]:
    seen, kept = set(), []
    for entry in entries:
        key = (entry.get("alias"), entry["at"], entry["version"], entry["previous"])
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    return kept


def _after_champion_move(client: MlflowClient, model: str, move: AliasMove) -> None:
    """Bring the cards and `promotion` tags of the versions a `champion` move touched up to date."""
    if move.alias != CHAMPION:
        return
    try:
        update_roles(client, model, move, alias_history(client, model))
    except MlflowException as exc:  # the move stands; a stale card is only a stale card
        logger.warning("could not update the cards after %s moved: %s", CHAMPION, exc)


def move_alias(
    client: MlflowClient,
    alias: str,
    version: str | None,
    by: str,
    reason: str,
    model: str = MODEL_NAME,
) -> AliasMove:
    """Point `alias` at `version` (None removes it) and record the move in the history."""
    reconcile_aliases(client, model)  # a move made outside closecast is recorded before this one
    previous = alias_version(client, alias, model)
    if version is None:
        client.delete_registered_model_alias(model, alias)
    else:
        client.set_registered_model_alias(model, alias, version)
    move = AliasMove(datetime.now(UTC), alias, version, previous, by[:300], reason[:1000])
    record_move(client, move, model)
    _after_champion_move(client, model, move)
    return move


def reconcile_aliases(client: MlflowClient, model: str = MODEL_NAME) -> list[AliasMove]:
    """Record the alias moves made outside closecast since the last recorded one.

    An alias whose current version is not the one its last recorded move
    set was moved by someone else (the MLflow UI's alias editor, another
    client). MLflow keeps neither the time nor the user of an alias change,
    so the move is recorded at the time closecast noticed it, by OUTSIDE.
    A user who may not write the registry (403) gets the moves back
    unrecorded, with a warning: `status` still reports the alias's true
    version, and the next command of a user who may records it.

    Returns:
        The moves found, recorded or not.
    """
    current = current_aliases(client, model)
    history = alias_history(client, model)
    found = []
    for alias in ALIASES:
        last = next((m for m in reversed(history) if m.alias == alias), None)
        recorded = last.version if last else None
        if current.get(alias) == recorded:
            continue
        since = f"after the last recorded move at {last.at:%Y-%m-%d %H:%M} UTC" if last else ""
        reason = (
            f"{alias} points at v{current.get(alias) or '-'}, not at v{recorded or '-'} as "
            f"recorded: moved {OUTSIDE}{', ' + since if since else ''}; MLflow keeps no time "
            "or user for alias moves, so this is when closecast noticed it"
        )
        move = AliasMove(datetime.now(UTC), alias, current.get(alias), recorded, OUTSIDE, reason)
        found.append(move)
        try:
            record_move(client, move, model)
        except MlflowException as exc:
            if refusal_status(exc) is None:
                raise
            logger.warning(
                "%s of %s was moved outside closecast (v%s -> v%s) but this user may not "
                "record it (%s): the next closecast command of a user with EDIT on %s will",
                alias, model, recorded or "-", current.get(alias) or "-", exc.error_code, model,
            )  # fmt: skip
            continue
        _after_champion_move(client, model, move)
    return found


def discard_run_versions(client: MlflowClient, run_id: str, model: str = MODEL_NAME) -> list[str]:
    """Delete every version a (failed) run registered; returns their numbers."""
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    found = client.search_model_versions(f"name='{model}' and tags.run_id='{run_id}'")
    versions = sorted(str(v.version) for v in found)
    for version in versions:
        client.delete_model_version(model, version)
    return versions


@contextmanager
def rollback_registration(
    tracking_uri: str, run_id: str, model: str = MODEL_NAME
) -> Iterator[None]:
    """If the block fails, delete what `run_id` registered in `model` and put its aliases back.

    The original exception always propagates; a failing clean-up is logged,
    never raised in its place.
    """
    client = configure_mlflow(tracking_uri)
    before = {alias: alias_version(client, alias, model) for alias in ALIASES}
    try:
        yield
    except BaseException:
        try:
            discarded = discard_run_versions(client, run_id, model)
            for alias, version in before.items():
                if alias_version(client, alias, model) != version:
                    by = f"rollback of failed run {run_id}"
                    reason = "restoring the alias the run had moved"
                    move_alias(client, alias, version, by, reason, model)
            if discarded:
                logger.warning("run failed: discarded %s v%s", model, ", v".join(discarded))
        except Exception as exc:  # the run's own error is the one to report
            logger.error("could not roll back the registry after the failure: %s", exc)
        raise


def alias_history(client: MlflowClient, model: str = MODEL_NAME) -> list[AliasMove]:
    """Every recorded alias move, oldest first: the versions' `alias_moves` and any tags of
    the older layouts on the registered model."""
    try:
        tags = client.get_registered_model(model).tags
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    moves = _tag_moves(tags)
    for version in client.search_model_versions(f"name='{model}'"):
        entries = json.loads(version.tags.get(MOVES_TAG, "[]"))
        moves += [AliasMove.from_entry("", e) for e in entries if e.get("model") == model]
    return sorted(dict.fromkeys(moves), key=lambda m: m.at)  # once each, oldest first


def _tag_moves(tags: dict[str, str]) -> list[AliasMove]:
    """The moves the older layouts kept in registered-model tags."""
    moves = [AliasMove.from_json(v) for k, v in tags.items() if k.startswith(LEGACY_PREFIX)]
    for alias in ALIASES:
        entries = json.loads(tags.get(f"{alias}_history", "[]"))
        moves += [AliasMove.from_entry(alias, entry) for entry in entries]
    return moves


def alias_at(history: list[AliasMove], alias: str, when: datetime) -> str | None:
    """The version `alias` pointed at, at time `when`, by the recorded history."""
    version = None
    for move in history:
        if move.alias == alias and move.at <= when:
            version = move.version
    return version


def require_version(client: MlflowClient, version: str, model: str = MODEL_NAME) -> None:
    """Raise UnknownVersion when `version` is not a number or `model` has no such version."""
    if not version.isdigit():
        raise UnknownVersion(f"invalid version {version!r}: expected a version number")
    try:
        client.get_model_version(model, version)
    except MlflowException as exc:
        if _missing(exc):
            raise UnknownVersion(f"version {version} of {model} does not exist") from None
        raise


def promote_version(
    tracking_uri: str, version: str, by: str, reason: str, candidates: str | None = None
) -> AliasMove:
    """Point `champion` at an existing `version` (a manual promotion, or a rollback).

    With `candidates`, `version` is a version of that model: it is copied into
    MODEL_NAME (once: a later promotion of the same candidate, a rollback,
    reuses the copy) and `champion` is pointed at the copy. Copying needs
    EDIT on MODEL_NAME, so a user without it is refused before anything changes.

    Raises:
        UnknownVersion: when `version` is not a number or no such version exists.
    """
    client = configure_mlflow(tracking_uri)
    require_version(client, version, candidates or MODEL_NAME)
    if candidates is None:
        return move_alias(client, CHAMPION, version, by, reason)
    copy = production_copy(client, candidates, version)
    reason = f"{reason} (copy of {candidates} v{version})"
    return move_alias(client, CHAMPION, copy, by, reason)


def production_copy(client: MlflowClient, candidates: str, version: str) -> str:
    """The MODEL_NAME version copied from `candidates` v`version`, copied now if there is none."""
    source = f"models:/{candidates}/{version}"
    for found in client.search_model_versions(f"name='{MODEL_NAME}'"):
        if found.source == source:
            return str(found.version)
    # What MLflow's copy_model_version (and the UI's "Promote model") does, without its
    # progress prints, and keeping a refusal (403) the tracking server's own error.
    src = client.get_model_version(candidates, version)
    try:
        client.create_registered_model(MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {k: v for k, v in src.tags.items() if k != MOVES_TAG}
    tags["candidate"] = f"{candidates} v{version}"
    copied = client.create_model_version(
        MODEL_NAME, source, run_id=src.run_id, tags=tags, description=src.description
    )
    return str(copied.version)


def version_table(client: MlflowClient, model: str = MODEL_NAME) -> pd.DataFrame:
    """One row per registered version, newest first: what `closecast models` prints."""
    columns = ["version", "aliases", "created", *GATED_METRICS, "promotion"]
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(current_aliases(client, model).items()):
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
        for v in client.search_model_versions(f"name='{model}'")
    ]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("version", ascending=False, ignore_index=True)
