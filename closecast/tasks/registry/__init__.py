"""The model registry: the champion, the promotion gate, registration, aliases, model cards."""
