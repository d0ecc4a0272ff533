"""The Keras reference of PRODUCT.md §9, timed on request: run by train_speed.py in its own venv.

Not part of the product (closecast does not depend on TensorFlow): train_speed.py
starts this file with another interpreter (`--keras-python`, e.g. a venv made
with `pip install tensorflow-cpu keras`), hands it the very windows it trains
on (an .npz of x_train, y_train, x_val, y_val), and asks for one timed run
per line on stdin, so that the two frameworks are timed interleaved on the
same machine state.

The model is the reference code's: LSTM(32) -> Dropout(0.2) -> Dense(1),
Adam (Keras defaults: learning rate 1e-3), MSE, batch 32, 50 epochs,
shuffled, validated on the held-out windows each epoch, verbose 0. A run is
the wall time of `model.fit` on a freshly built and compiled model, which
includes Keras tracing its train step, as every fresh training does.

Protocol: prints one JSON line {"ready": true, versions...} after the imports,
then, for each input line `run <seed>`, one JSON line {"train_s": seconds}.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # no oneDNN / CPU-feature banners

import keras
import numpy as np
import tensorflow as tf

EPOCHS, BATCH = 50, 32


def build(window: int, features: int) -> keras.Model:
    """The reference network, compiled as the reference compiles it."""
    model = keras.Sequential(
        [
            keras.Input(shape=(window, features)),
            keras.layers.LSTM(32),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mean_squared_error")
    return model


def main() -> None:
    data = np.load(sys.argv[1])
    x_train, y_train = data["x_train"], data["y_train"]  # (N, T, F), (N,)
    x_val, y_val = data["x_val"], data["y_val"]
    print(json.dumps({"ready": True, "keras": keras.__version__, "tensorflow": tf.__version__}))
    sys.stdout.flush()
    for line in sys.stdin:
        seed = int(line.split()[1])
        keras.utils.set_random_seed(seed)
        model = build(x_train.shape[1], x_train.shape[2])
        started = time.perf_counter()
        model.fit(
            x_train,
            y_train,
            epochs=EPOCHS,
            batch_size=BATCH,
            validation_data=(x_val, y_val),
            shuffle=True,
            verbose=0,
        )
        train_s = time.perf_counter() - started
        val_loss = float(model.evaluate(x_val, y_val, verbose=0))
        print(json.dumps({"train_s": train_s, "val_loss": val_loss}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
