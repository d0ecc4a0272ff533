"""Who was champion when: a version's champion spans, its `promotion` tag and its card's
first line, kept true after every `champion` move (the gate's, a person's, the MLflow UI's).

A version's `promotion` tag starts with the gate's decision at registration
(`champion`, `rejected`, `manual`) and goes on as history: "rejected;
champion since 2018-12-20 14:05 UTC", "champion; champion 2018-11-02 09:00
UTC – 2018-11-09 10:00 UTC (superseded by v5)". Its card's first line says
what it is now ("Champion from … to …, superseded by v5."); the line the
gate wrote at registration follows, as "At registration: …".
"""

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from closecast.core.config import CHAMPION
from closecast.tasks.registry.model_card import fit_description

if TYPE_CHECKING:
    from closecast.tasks.registry.aliases import AliasMove

AT_REGISTRATION = "At registration: "
PROMOTION_TAG = "promotion"
GATE_BY = "nightly run "  # how the nightly's own moves are signed (register.promote_model)
OUTSIDE = "outside closecast (the MLflow UI or another client)"  # who made a move found later


@dataclass(frozen=True)
class Span:
    """One stretch of time a version was champion."""

    start: datetime
    end: datetime | None  # None: it still is
    by: str  # who made it champion
    reason: str
    successor: str | None = None  # the version that replaced it


def champion_spans(version: str, history: list["AliasMove"]) -> list[Span]:
    """The stretches `version` was champion, oldest first, by the alias history."""
    spans: list[Span] = []
    held: AliasMove | None = None
    for move in history:
        if move.alias != CHAMPION:
            continue
        if move.version == version and held is None:
            held = move
        elif move.version != version and held is not None:
            spans.append(Span(held.at, move.at, held.by, held.reason, move.version))
            held = None
    if held is not None:
        spans.append(Span(held.at, None, held.by, held.reason))
    return spans


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _by_the_gate(spans: list[Span]) -> bool:
    """Champion once, still, made so by the nightly that registered it: the gate's line holds."""
    return len(spans) == 1 and spans[0].end is None and spans[0].by.startswith(GATE_BY)


def promotion_text(gate: str, spans: list[Span]) -> str:
    """The `promotion` tag: the gate's decision, then the version's champion spans."""
    if not spans or (gate == CHAMPION and _by_the_gate(spans)):
        return gate
    parts = [
        f"champion since {_when(s.start)}"
        if s.end is None
        else f"champion {_when(s.start)} – {_when(s.end)} (superseded by v{s.successor or '-'})"
        for s in spans
    ]
    return f"{gate}; " + "; ".join(parts)


def status_line(spans: list[Span]) -> str | None:
    """The card's first line once people or later versions moved `champion` (None: the line
    the gate wrote at registration still holds)."""
    if not spans or _by_the_gate(spans):
        return None
    last = spans[-1]
    if last.end is not None:
        successor = f"v{last.successor}" if last.successor else "no version (alias removed)"
        return f"Champion from {_when(last.start)} to {_when(last.end)}, superseded by {successor}."
    if last.by == OUTSIDE:
        return f"Champion since {_when(last.start)} (when closecast noticed it), moved {OUTSIDE}."
    reason = last.reason if len(last.reason) <= 160 else last.reason[:159] + "…"
    return f"Champion since {_when(last.start)}, moved by {last.by}: {reason}."


def restate_card(card: str, line: str | None) -> str:
    """`card` with `line` first and the gate's own first line after it (`line` None: the
    gate's line first again)."""
    lines = card.split("\n")
    if len(lines) > 2 and lines[2].startswith(AT_REGISTRATION):
        original, rest = lines[2].removeprefix(AT_REGISTRATION), lines[3:]
    else:
        original, rest = lines[0], lines[1:]
    if line is None:
        return "\n".join([original, *rest])
    return fit_description("\n".join([line, "", AT_REGISTRATION + original, *rest]))


def update_roles(
    client: MlflowClient, model: str, move: "AliasMove", history: list["AliasMove"]
) -> None:
    """After `move` of `champion`: the `promotion` tag and card of the versions it touched."""
    for version in {move.version, move.previous} - {None}:
        assert version is not None
        try:
            found = client.get_model_version(model, version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # a version deleted since (a failed run's, rolled back)
            raise
        spans = champion_spans(version, history)
        tag = found.tags.get(PROMOTION_TAG, "")
        text = promotion_text(tag.split(";")[0].strip() or "unknown", spans)
        if text != tag:
            client.set_model_version_tag(model, version, PROMOTION_TAG, text)
        card = found.description or ""
        updated = restate_card(card, status_line(spans)) if card else card
        if updated != card:
            client.update_model_version(model, version, description=updated)
