import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.utils.request_utils import augmented_raise_for_status
from mlflow.utils.rest_utils import verify_rest_response

from closecast.core.errors import PipelineError
from closecast.tasks.mlflow.auth import refusal_status, refusals_as_errors, refused_request

URI = "http://127.0.0.1:5000"
NOT_AUTHENTICATED = b"You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth"


def answer(status: int, body: bytes, method: str = "POST", path: str = "") -> requests.Response:
    """An HTTP response as the basic-auth app sends it (plain text), to the request that got it."""
    response = requests.Response()
    response.status_code, response._content = status, body
    response.request = requests.Request(method, f"{URI}{path}").prepare()
    response.url = f"{URI}{path}"
    return response


def rest_error(status: int, endpoint: str, body: bytes = b"Permission denied") -> MlflowException:
    """The exception MLflow's REST client raises for the answer."""
    with pytest.raises(MlflowException) as raised:
        verify_rest_response(answer(status, body, path=endpoint), endpoint)
    return raised.value


def artifact_error(status: int, method: str) -> requests.HTTPError:
    """The exception MLflow's artifact repository (through the server) raises for the answer."""
    path = "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/config.json"
    with pytest.raises(requests.HTTPError) as raised:
        augmented_raise_for_status(answer(status, b"Permission denied", method, path))
    return raised.value


@pytest.mark.parametrize(
    ("user", "says"),
    [
        ("reader", f"MLflow at {URI} refused the credentials of user reader (401): check "
         "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
        (None, f"MLflow at {URI} asks for credentials (401): set MLFLOW_TRACKING_USERNAME and "
         "MLFLOW_TRACKING_PASSWORD"),
    ],
)  # fmt: skip
def test_a_refused_login_names_the_user_and_the_variables(
    user: str | None, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 says the credentials were refused (or missing), never that MLflow is unreachable."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    if user:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    error = rest_error(401, "/api/2.0/mlflow/experiments/search", NOT_AUTHENTICATED)
    assert refusal_status(error) == 401
    assert str(refused_request(URI, error)) == says


@pytest.mark.parametrize(
    ("error", "experiment", "says"),
    [
        (rest_error(403, "/api/2.0/mlflow/registered-models/alias"), None,
         "may not move aliases of closecast-lstm: MLflow at {uri} needs EDIT permission on the "
         "registered model (403 Permission denied)"),
        (rest_error(403, "/api/2.0/mlflow/model-versions/create"), None,
         "may not register versions of closecast-lstm: MLflow at {uri} needs EDIT permission"),
        (rest_error(403, "/api/2.0/mlflow/model-versions/delete"), None,
         "may not delete versions of closecast-lstm: MLflow at {uri} needs MANAGE permission"),
        (rest_error(403, "/api/2.0/mlflow/registered-models/get"), None,
         "may not read closecast-lstm: MLflow at {uri} needs READ permission"),
        (rest_error(403, "/api/2.0/mlflow/runs/create"), "closecast",
         "may not log runs to experiment closecast: MLflow at {uri} needs EDIT permission on the "
         "experiment"),
        (rest_error(403, "/api/2.0/mlflow/runs/log-batch"), None,
         "may not log runs to the experiment: MLflow at {uri} needs EDIT permission"),
        (artifact_error(403, "PUT"), "closecast-backfill",
         "may not log runs to experiment closecast-backfill: MLflow at {uri} needs EDIT"),
        (artifact_error(403, "GET"), "closecast",
         "may not read runs of experiment closecast: MLflow at {uri} needs READ permission"),
        (rest_error(403, "/api/3.0/mlflow/gateway/endpoints/get"), None,
         "MLflow at {uri} refused user reader /api/3.0/mlflow/gateway/endpoints/get (403 "
         "Permission denied)"),
    ],
)  # fmt: skip
def test_a_refused_permission_names_the_user_the_action_and_the_permission(
    error: Exception, experiment: str | None, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 403 is one line: who may not do what, and the permission MLflow's basic-auth asks."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    assert refusal_status(error) == 403
    message = str(refused_request(URI, error, experiment))
    assert says.format(uri=URI) in message and "\n" not in message
    assert message.startswith(("user reader may not ", f"MLflow at {URI} refused user reader"))


@pytest.mark.parametrize(
    "error",
    [
        rest_error(404, "/api/2.0/mlflow/registered-models/get", b"not found"),
        rest_error(500, "/api/2.0/mlflow/runs/create", b"oops"),
        MlflowException("Registered Model with name=x not found"),
        OSError("unable to open database file"),
        ValueError("not MLflow at all"),
    ],
)
def test_other_errors_are_not_refusals(error: Exception) -> None:
    """Only a 401 or 403 reads as a refusal; anything else is left to its own handling."""
    assert refusal_status(error) is None
    assert refused_request(URI, error) is None


def test_refusals_as_errors_turns_a_refusal_into_one_pipeline_error_and_passes_others() -> None:
    """A refusal in the block is re-raised as closecast's line; any other error unchanged."""
    refusal = rest_error(403, "/api/2.0/mlflow/registered-models/alias")
    moving = r"may not move aliases of closecast-lstm"
    with pytest.raises(PipelineError, match=moving) as raised, refusals_as_errors(URI):
        raise refusal
    assert raised.value.__cause__ is refusal
    other = rest_error(500, "/api/2.0/mlflow/runs/create", b"oops")
    with pytest.raises(MlflowException) as passed, refusals_as_errors(URI):
        raise other
    assert passed.value is other
