"""What a tracking server with authentication answers: a refused login or permission, in one line.

A server started with `mlflow server --app-name basic-auth` answers 401 to
missing or wrong credentials (MLFLOW_TRACKING_USERNAME/_PASSWORD) and 403
to a user without the permission a request needs. MLflow raises either as
a generic error with the REST endpoint in its text; closecast reports it as
its own PipelineError naming the user, what they may not do and the
permission MLflow asks for.
"""

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException
from requests.exceptions import HTTPError

from closecast.core.config import MODEL_NAME
from closecast.core.errors import PipelineError

# MLflow's error codes for a request the server refused, and their HTTP statuses.
REFUSED_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
# The last step of a REST endpoint that only reads (`/api/2.0/mlflow/runs/search`).
_READS = {"get", "search", "get-by-name", "list", "get-history", "get-latest-versions"}
_MODEL_PATHS = ("/registered-models/", "/model-versions/")
_EXPERIMENT_PATHS = ("/experiments/", "/runs/", "/metrics/", "/logged-models", "/artifacts")


def refusal_status(exc: BaseException) -> int | None:
    """401 or 403 when `exc` is a tracking server refusing a request; None for any other error.

    REST calls raise an MlflowException with the status's error code;
    artifact uploads and downloads through the server raise requests' HTTPError.
    """
    if isinstance(exc, MlflowException):
        return REFUSED_STATUS.get(exc.error_code)
    if isinstance(exc, HTTPError) and exc.response is not None:
        status = exc.response.status_code
        return status if status in (401, 403) else None
    return None


def _refused_endpoint(exc: BaseException) -> tuple[str, str | None]:
    """The endpoint path (`/api/2.0/mlflow/registered-models/alias`) and, when known, the method."""
    if isinstance(exc, HTTPError) and exc.request is not None:
        return urlsplit(str(exc.request.url)).path, exc.request.method
    found = re.search(r"endpoint (/\S+) failed", str(exc))
    return (found.group(1) if found else ""), None


def _needed_permission(
    endpoint: str, method: str | None, experiment: str | None
) -> tuple[str, str, str] | None:
    """What a refused request was doing, the permission MLflow's basic-auth app asks for, on what.

    Permissions are MLflow's: READ reads, EDIT writes (runs, versions, tags,
    and setting an alias), MANAGE also deletes and grants. The REST path of
    a model alias is the same for reading, setting and deleting it; closecast
    reads an alias only through calls that fail earlier on a missing READ, so
    a refused alias request without a method is taken for a move.
    """
    step = endpoint.rstrip("/").rsplit("/", 1)[-1]
    reads = method == "GET" if method else step in _READS
    deletes = method == "DELETE" or step == "delete"
    if any(part in endpoint for part in _MODEL_PATHS):
        kind, name = "registered model", MODEL_NAME
        if step == "alias" and not reads:
            return (f"move aliases of {name}", "MANAGE" if deletes else "EDIT", kind)
        verb = "read" if reads else "delete versions of" if deletes else "register versions of"
    elif any(part in endpoint for part in _EXPERIMENT_PATHS):
        kind = "experiment"
        name = f"experiment {experiment}" if experiment else "the experiment"
        verb = "read runs of" if reads else "delete runs of" if deletes else "log runs to"
    else:
        return None
    return (f"{verb} {name}", "READ" if reads else "MANAGE" if deletes else "EDIT", kind)


def refused_request(
    tracking_uri: str, exc: BaseException, experiment: str | None = None
) -> PipelineError | None:
    """closecast's one line for a request the tracking server refused; None if it was not refused.

    A 401 names the user whose credentials were refused (or says none were
    given), a 403 the user, what they may not do and the permission MLflow
    needs. Users come from MLFLOW_TRACKING_USERNAME, as MLflow's client reads them.
    """
    status = refusal_status(exc)
    if status is None:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        if user:
            return PipelineError(
                f"MLflow at {tracking_uri} refused the credentials of user {user} (401): "
                "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
            )
        return PipelineError(
            f"MLflow at {tracking_uri} asks for credentials (401): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    body = re.search(r"Response (?:body|text): '?([^'\n]{1,80})", str(exc))
    why = f"403 {body.group(1).strip()}" if body else "403 Permission denied"
    who = f"user {user}" if user else "this user"
    endpoint, method = _refused_endpoint(exc)
    needed = _needed_permission(endpoint, method, experiment)
    if needed is None:
        request = " ".join(filter(None, (method, endpoint))) or "a request"
        return PipelineError(f"MLflow at {tracking_uri} refused {who} {request} ({why})")
    action, permission, kind = needed
    return PipelineError(
        f"{who} may not {action}: MLflow at {tracking_uri} needs "
        f"{permission} permission on the {kind} ({why})"
    )


@contextmanager
def refusals_as_errors(tracking_uri: str, experiment: str | None = None) -> Iterator[None]:
    """Re-raise a request the tracking server refused (401, 403) as `refused_request`'s line."""
    try:
        yield
    except (MlflowException, HTTPError) as exc:
        refusal = refused_request(tracking_uri, exc, experiment)
        if refusal is None:
            raise
        raise refusal from exc
