"""The pipeline's steps, one sub-package per stage, in the order a night runs them.

- `data/`: the price sources, fetching, the store, validation;
- `modeling/`: features, windows, training, evaluation, prediction;
- `registry/`: the champion, the gate, registration, aliases, model cards;
- `reporting/`: the report, its summary, the scorecard, run logging, plots, events;
- `mlflow/`: the connection to the tracking server and its permissions.

A stage imports only the stages below it (reporting -> registry -> modeling
-> data, mlflow), and its logic is plain functions on data; its `steps.py`
wraps them in thin Prefect tasks of the same name. import-linter checks both
(pyproject.toml).
"""
