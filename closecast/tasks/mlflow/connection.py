"""The MLflow connection: a client that has answered, and the experiment.

A refused connection is reported within seconds rather than after MLflow's
four minutes of retries; a request a tracking server with authentication
refuses (401 credentials, 403 permission) is one line naming the user and
what they lack (`auth.py`); a damaged store is one line naming the file. The
runs themselves are opened in `runs.py`.
"""

import logging
import os
import re
import socket
import time
from urllib.parse import urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from requests.utils import get_environ_proxies
from sqlalchemy.exc import SQLAlchemyError

from closecast.core.errors import PipelineError
from closecast.tasks.mlflow.auth import refusal_status, refused_request

logger = logging.getLogger(__name__)

# A refused connection to the tracking server is tried again after each wait, then reported.
REFUSED_WAITS_S = (1.0, 2.0, 4.0)
CONNECT_TIMEOUT_S = 10.0


def configure_mlflow(tracking_uri: str) -> MlflowClient:
    """Point MLflow's tracking and registry at `tracking_uri` and return a client.

    MLflow also writes the URI into $MLFLOW_TRACKING_URI and $MLFLOW_REGISTRY_URI;
    they are put back as they were, because the environment is the user's word
    (`PipelineConfig.mlflow_uri` reads it) and a later config of another home
    must not inherit this one's store.
    """
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def unreachable(tracking_uri: str, exc: Exception, retries: int | None = None) -> PipelineError:
    """One line saying MLflow at `tracking_uri` cannot be reached, and why.

    `retries` defaults to MLflow's own MLFLOW_HTTP_REQUEST_MAX_RETRIES.
    """
    text = str(exc)
    cause = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if cause:
        why = cause.group(1).strip()
    elif "Max retries exceeded" in text or "timed out" in text.lower():
        why = "no answer"
    else:
        why = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    after = ""
    if tracking_uri.startswith(("http:", "https:")):
        count = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() if retries is None else retries
        after = f" after {count} retries"
    return PipelineError(f"MLflow at {tracking_uri} cannot be reached{after}: {why}")


def refuse_fast(tracking_uri: str, waits_s: tuple[float, ...] | None = None) -> None:
    """Fail within seconds when the port of the tracking server refuses connections.

    MLflow retries a refused connection like any other failure: 7 retries
    with exponential backoff, over four minutes. A refusal is the host's
    definite answer, so its port is tried directly, again after each of
    `waits_s` (default REFUSED_WAITS_S: a server restarting has those
    seconds), and then reported.
    A port that accepts, a connect that times out, a proxy in the way or a
    user's own MLFLOW_HTTP_REQUEST_MAX_RETRIES leave it to MLflow's retries.

    Raises:
        PipelineError: the port refused every try.
    """
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if MLFLOW_HTTP_REQUEST_MAX_RETRIES.is_set() or get_environ_proxies(tracking_uri):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    waits_s = REFUSED_WAITS_S if waits_s is None else waits_s
    for wait_s in (*waits_s, None):
        try:
            with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
                return
        except ConnectionRefusedError as exc:
            refused = exc
        except OSError:  # no route, DNS, timeout: maybe transient, MLflow's retries decide
            return
        if wait_s is not None:
            time.sleep(wait_s)
    raise unreachable(tracking_uri, refused, retries=len(waits_s))


def connect_mlflow(tracking_uri: str) -> MlflowClient:
    """A client for `tracking_uri` that has answered once.

    A refused connection is reported within seconds (`refuse_fast`); a
    server that accepts but does not answer gets MLflow's own retries
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT). A server
    that answers 401 has answered: its refusal of the credentials (MLflow
    does not retry it) is reported as such, not as an unreachable server.
    A SQLite store that is no database (truncated, overwritten) says so.
    Either way the failure is one PipelineError line, not a page of urllib3 errors.
    """
    refuse_fast(tracking_uri)
    try:
        client = configure_mlflow(tracking_uri)  # opens a SQL store: a damaged one fails here
        client.search_experiments(max_results=1)
    except (MlflowException, OSError, SQLAlchemyError) as exc:
        if tracking_uri.startswith("sqlite:") and refusal_status(exc) is None:
            raise unreadable_store(tracking_uri, exc) from None  # a file: damaged, not unreachable
        raise refused_request(tracking_uri, exc) or unreachable(tracking_uri, exc) from None
    return client


def unreadable_store(tracking_uri: str, exc: Exception) -> PipelineError:
    """One line saying the SQLite store at `tracking_uri` cannot be read, in sqlite3's words.

    SQLAlchemy (or MLflow around it) says `(sqlite3.DatabaseError) file is
    not a database` and then the SQL; the line keeps the words only.
    """
    text = str(exc).strip()
    why = text.splitlines()[0] if text else type(exc).__name__
    why = re.sub(r"^\([\w.]+\) ", "", why)
    return PipelineError(f"MLflow database {tracking_uri} cannot be read: {why}")


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with its artifact location) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))
