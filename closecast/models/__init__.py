"""The PyTorch LSTM, its training loop and the MLflow pyfunc wrapper.

This package depends on numpy, pandas, torch, scipy and the foundation (core/),
and mlflow only in the pyfunc wrapper, so a logged
model can carry it as code and load anywhere.
"""
