"""The forecaster: the PyTorch LSTM, its encoding and training loop, the interval
method (intervals.py, with scale.py and calibration.py), and the MLflow pyfunc wrapper.

Of closecast it imports the foundation (closecast.core) only, never tasks, flows or
the command line (import-linter's layers contract); beyond that numpy, pandas,
torch, scipy and pydantic, and mlflow only in the pyfunc wrapper. A logged model
carries closecast.models and closecast.core as code, so it loads anywhere.
"""
