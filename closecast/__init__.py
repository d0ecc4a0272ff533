"""closecast: a nightly Prefect pipeline that forecasts tomorrow's closes.

The package is the whole product: `cli/` (the `closecast` command), `flows/`
(the Prefect flows), `tasks/` (their steps, by stage), `models/` (the LSTM and
its MLflow pyfunc) and `core/` (configuration, calendar, errors, statuses).
"""

from pkgutil import extend_path

# A logged model carries its own copy of closecast.models and closecast.core
# (tasks/registry/register.py: model_code); whichever copy is imported first,
# the other's folders stay reachable.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
