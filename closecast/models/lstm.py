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
dense layer: to one output (`distribution="none"`, the reference design), or
to the parameters of the next return's distribution (models/distribution.py),
a head that starts at zero so that the untrained network predicts location 0
and multiplier 1: the HAR-scale recipe it grows from. `torch.nn.LSTM` computes exactly these equations
(tests/models/test_lstm.py checks it against NumPy), with its fused kernels.
"""

import torch
from torch import nn

from closecast.core.config import LSTMConfig
from closecast.models.distribution import head_outputs

__all__ = ["LSTMConfig", "LSTMForecaster"]


class LSTMForecaster(nn.Module):
    """Window of features -> one scalar (the encoded next-day target), or K distribution
    parameters."""

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
        self.outputs = head_outputs(config.distribution)
        self.head = nn.Linear(config.hidden_size, self.outputs)
        if self.outputs > 1:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map windows to predictions.

        Args:
            x: windows, shape (B, T, F).

        Returns:
            One prediction per window, (B,), or K parameters per window, (B, K).
        """
        out, _ = self.lstm(x)  # (B, T, F) -> (B, T, H); zero initial (h, C)
        last = out[:, -1, :]  # (B, T, H) -> (B, H)
        y = self.head(self.dropout(last))  # (B, H) -> (B, K)
        return y.squeeze(-1) if self.outputs == 1 else y  # (B, 1) -> (B,)
