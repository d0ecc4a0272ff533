"""The LSTM of the design: gated recurrence over a window, dropout, dense head.

For each step t, with [h, x] the concatenation of the previous hidden state
and the input:

    f_t = σ(W_f·[h_{t-1}, x_t] + b_f)        forget gate
    i_t = σ(W_i·[h_{t-1}, x_t] + b_i)        input gate
    C̃_t = tanh(W_C·[h_{t-1}, x_t] + b_C)     candidate cell
    C_t = f_t ⊙ C_{t-1} + i_t ⊙ C̃_t
    o_t = σ(W_o·[h_{t-1}, x_t] + b_o)        output gate
    h_t = o_t ⊙ tanh(C_t)

from zero initial states; the last hidden state goes through dropout and a
dense layer to one output. `torch.nn.LSTM` computes exactly these equations
(tests/models/test_lstm.py checks it against NumPy), with its fused kernels.
"""

import torch
from torch import nn

from closecast.core.config import LSTMConfig

__all__ = ["LSTMConfig", "LSTMForecaster"]


class LSTMForecaster(nn.Module):
    """Window of features -> one scalar (the encoded next-day target)."""

    def __init__(self, config: LSTMConfig, n_features: int) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        self.config = config
        self.n_features = n_features
        self.lstm = nn.LSTM(
            input_size=n_features,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows to predictions.

        Args:
            x: windows, shape (B, T, F).

        Returns:
            One prediction per window, shape (B,).
        """
        out, _ = self.lstm(x)  # (B, T, F) -> (B, T, H); zero initial (h, C)
        last = out[:, -1, :]  # (B, T, H) -> (B, H)
        return self.head(self.dropout(last)).squeeze(-1)  # (B, H) -> (B, 1) -> (B,)
