"""The PyTorch LSTM, its training loop and the MLflow pyfunc wrapper.

This package depends only on numpy, pandas, torch and mlflow, so a logged
model can carry it as code and load anywhere.
"""
