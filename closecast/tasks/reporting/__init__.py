"""What a run leaves for people: the report and its summary, the scorecard, the MLflow run, plots and events."""
