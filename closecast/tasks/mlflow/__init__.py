"""The MLflow tracking server: connecting (fast refusal, damaged stores) and its permissions."""
