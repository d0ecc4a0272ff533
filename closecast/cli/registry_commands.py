"""The commands that read or move the model registry: models, promote, status."""

from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated

import typer

from closecast.cli.imports import heavy_imports
from closecast.cli.options import HomeOpt, build_config
from closecast.core.errors import InputError, PipelineError


def _missing_database(uri: str) -> Path | None:
    """The SQLite file a sqlite tracking URI names, when it does not exist."""
    path = Path(uri.removeprefix("sqlite:///"))
    return path if uri.startswith("sqlite:///") and not path.is_file() else None


def _registry(home: Path | None):  # type: ignore[no-untyped-def]
    """A client for the registry the pipeline would use, after one successful contact."""
    from closecast.core.config import MODEL_NAME

    with heavy_imports():
        from closecast.tasks.mlflow.auth import refusals_as_errors
        from closecast.tasks.mlflow.connection import connect_mlflow
        from closecast.tasks.registry.aliases import reconcile_aliases

    config = build_config(home)
    uri = config.mlflow_uri
    if missing := _missing_database(uri):
        raise InputError(
            f"no MLflow database at {missing}: run `closecast run` first, or set MLFLOW_TRACKING_URI"
        )
    client = connect_mlflow(uri)
    with refusals_as_errors(uri):
        for model in dict.fromkeys((MODEL_NAME, config.candidates or MODEL_NAME)):
            reconcile_aliases(client, model)  # moves made in the MLflow UI, recorded first
    return uri, client


def _who() -> str:
    """Who promotes: the tracking server's user (MLFLOW_TRACKING_USERNAME), else the OS user."""
    import getpass
    import os

    if user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def _as_of_instant(value: str) -> datetime:
    """An ISO date (its end, UTC) or datetime (UTC unless it says otherwise)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day, time.max, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"invalid --at {value!r}: expected YYYY-MM-DD or an ISO datetime"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def models(
    home: HomeOpt = None,
    history: Annotated[
        bool, typer.Option("--history", help="Every alias move: when, from, to, by whom.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Which version was champion at YYYY-MM-DD (end of day, UTC)."),
    ] = None,
) -> None:
    """List registered versions: version, aliases, created, metrics, promotion decision."""
    from closecast.core.config import MODEL_NAME

    with heavy_imports():
        from closecast.tasks.registry.aliases import (
            CHAMPION,
            alias_at,
            alias_history,
            version_table,
        )

    when = _as_of_instant(at) if at is not None else None
    uri, client = _registry(home)
    if when is not None:
        version = alias_at(alias_history(client), CHAMPION, when)
        typer.echo(
            f"{CHAMPION} at {when.isoformat(timespec='seconds')}: "
            + (f"{MODEL_NAME} v{version}" if version else "none recorded")
        )
        return
    if history:
        moves = alias_history(client)
        if not moves:
            typer.echo(f"no alias moves recorded for {MODEL_NAME} at {uri}")
        for m in moves:
            typer.echo(
                f"{m.at.isoformat(timespec='seconds')}  {m.alias:<10}  "
                f"v{m.previous or '-'} -> v{m.version or '-'}  by {m.by}"
                + (f"  ({m.reason})" if m.reason else "")
            )
        return
    candidates = build_config(home).candidates
    for model in (candidates, MODEL_NAME) if candidates else (MODEL_NAME,):
        table = version_table(client, model)
        if candidates:  # two models: each table under its name
            typer.echo(f"{model}:")
        if table.empty:
            typer.echo(f"no versions of {model} registered at {uri}")
            continue
        typer.echo(table.to_string(index=False))


def promote(
    version: Annotated[str, typer.Argument(help="Registry version to make champion.")],
    home: HomeOpt = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the alias history.")
    ] = "manual review",
) -> None:
    """Point `champion` at VERSION; promoting the previous version is the rollback.

    With a candidates model (CLOSECAST_CANDIDATES_MODEL), VERSION is a candidate: it is
    copied into closecast-lstm (once) and `champion` points at the copy. A tracking server that refuses the user the move (403) fails it in one
    line naming the permission; the champion stays where it was.
    """
    from closecast.core.config import MODEL_NAME

    with heavy_imports():
        from closecast.tasks.mlflow.auth import refusals_as_errors
        from closecast.tasks.registry.aliases import UnknownVersion, promote_version

    if not version.isdigit():
        raise InputError(f"invalid version {version!r}: expected a version number")
    uri, _ = _registry(home)
    candidates = build_config(home).candidates
    by = f"closecast promote by {_who()}"
    try:
        with refusals_as_errors(uri):
            move = promote_version(uri, version, by, reason, candidates)
    except UnknownVersion as exc:
        raise InputError(str(exc)) from None
    copied = f"copy of {candidates} v{version}; " if candidates else ""
    typer.echo(f"champion: {MODEL_NAME} v{move.version} ({copied}was v{move.previous or '-'})")


def status(
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for monitors.")] = False,
) -> None:
    """Is the nightly healthy? Exit 0 healthy, 1 stale, failing, killed or never run.

    With --json a store that cannot be read (a damaged mlflow.db, a server
    that is down or refuses the credentials) is the same object, unhealthy,
    naming why; without it, one line on stderr.
    """
    with heavy_imports():
        from closecast.cli.alerts import LATE_WITHIN
        from closecast.cli.health import render, store_health, without_store

    config = build_config(home)
    now = datetime.now(UTC)
    if missing := _missing_database(config.mlflow_uri):
        problem = f"no nightly has run yet: no MLflow database at {missing}"
        if not as_json:
            typer.echo(f"closecast: {problem}", err=True)
            raise typer.Exit(1)
        health = without_store(now, problem)
    else:
        try:
            health = store_health(
                config.mlflow_uri,
                config.reports_dir,
                now,
                config.experiment,
                late_within=LATE_WITHIN,  # a nightly running longer is late: killed, here
            )
        except PipelineError as exc:
            if not as_json:
                raise  # the command line's one line: "closecast: pipeline failed: ..."
            health = without_store(now, str(exc))
    typer.echo(health.to_json() if as_json else render(health))
    if health.exit_code:
        raise typer.Exit(health.exit_code)
