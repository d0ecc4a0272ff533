"""From prices to a model: features, windows, training, evaluation and prediction."""
