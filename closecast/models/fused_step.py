"""One training step of the one-layer LSTMForecaster, written out by hand.

On a CPU the reference problem is tiny (batch 32, window 10, hidden 32), so
a step's time is per-operation overhead, not arithmetic: autograd records
and replays every op, `nn.LSTM`'s oneDNN kernels carry a fixed cost per
call, and `torch.optim.Adam` and `clip_grad_norm_` add Python work over six
parameters. This step computes the same numbers (to float rounding) with
NumPy ufuncs and matrix products on preallocated arrays: at these sizes a
NumPy call costs ~0.5 µs against ~1.5-6 µs for the same torch op (torch's
`tanh` on a (32, 32) block: 5.7 µs), so the whole step takes two thirds of
the CPU time of the same arithmetic in torch ops (benchmarks/README.md):

- every array is feature-major, (rows, B): each gate's (H, B) block is
  contiguous, so no elementwise op walks strided memory;
- forward, per time step: one product [W_ih | b | W_hh] @ [x_t; 1; h_{t-1}]
  (input projection, bias and recurrence at once), one `tanh` that
  activates all four gates (σ(z) = ½·tanh(z/2) + ½, with the ½ folded into
  the weights' rows) and nine more elementwise ops;
- backward through time: the local derivatives of all steps in a few
  vectorised ops, then per step one product and five elementwise ops; the
  weight gradients of all steps in one batched product and a sum;
- clipping and Adam: a dozen ops on one flat buffer that the module's
  parameters are views of, so the module always holds the current weights.

Matrix products run in NumPy's BLAS: `closecast.models.training.torch_threads` gives
it the training thread count.

The dropout mask is drawn exactly as `nn.Dropout` draws it (torch's RNG), so
with the same seed this step and autograd + `torch.optim.Adam` give the same
weights (tests/models/test_training.py checks both gradients and whole fits).
"""

import math

import numpy as np
import torch

from closecast.models.distribution import nll_numpy
from closecast.models.lstm import LSTMForecaster

# NumPy's functions bound once and handed `out` by position: ~70 ns a call less than
# `np.multiply(..., out=...)`, and a step makes ~200 calls.
_mul, _add, _sub, _div = np.multiply, np.add, np.subtract, np.divide
_tanh, _sqrt, _matmul = np.tanh, np.sqrt, np.matmul
_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the autograd path uses
_EPS = 1e-8


class _Buffers:
    """Work arrays for one (batch, window, features) shape, and the per-step views of them.

    Feature-major: a step's gates are (4H, B), so each gate i, f, g, o is a
    contiguous (H, B) block and every elementwise op runs on contiguous
    memory. Cutting a view costs about as much as a small op, so every view
    the time loops use is cut once here rather than on every step.
    """

    def __init__(self, batch: int, steps: int, features: int, hidden: int, outputs: int) -> None:
        def new(*shape: int) -> np.ndarray:
            return np.zeros(shape, dtype=np.float32)

        h, k = hidden, features + 1 + hidden
        # Step t's input to the gates: x_t, a row of ones (the bias) and h_{t-1}; the
        # hidden rows of slot t + 1 are where step t writes h_t (slot 0: h_0 = 0).
        self.inputs = new(steps + 1, k, batch)  # (T + 1, F + 1 + H, B)
        self.inputs[:, features, :] = 1.0
        self.x = self.inputs[:steps, :features, :]  # (T, F, B)
        self.gates = new(steps, 4 * h, batch)  # (T, 4H, B) scaled pre-activations (see step)
        self.acts = new(steps, 4 * h, batch)  # (T, 4H, B) activated gates i, f, g, o
        self.cells = new(steps + 1, h, batch)  # (T + 1, H, B), cells[0] = 0
        self.tanh_cells = new(steps, h, batch)  # (T, H, B)
        self.scratch = new(h, batch)  # (H, B)
        # d loss / d pre-activation per unit of d cell (i, f, g) or d hidden (o)
        self.local = new(steps, 4 * h, batch)  # (T, 4H, B)
        self.carry = new(steps, h, batch)  # (T, H, B) d cell / d hidden through tanh(C)
        self.d_gates = new(steps, 4 * h, batch)  # (T, 4H, B)
        self.d_cell = new(h, batch)  # (H, B)
        self.d_hidden = new(h, batch)  # (H, B)
        self.slope = new(steps, 4 * h, batch)  # (T, 4H, B) σ' of every gate
        self.square = new(steps, h, batch)  # (T, H, B)
        self.per_step_grads = new(steps, 4 * h, k)  # (T, 4H, F + 1 + H)
        self.prediction = new(outputs, batch)  # (K, B)
        self.d_out = new(outputs, batch)  # (K, B)
        # nn.Dropout's mask comes from torch's RNG: drawn (B, H) into a tensor this array shares.
        self.mask_tensor = torch.zeros(batch, h)  # (B, H)
        self.mask = self.mask_tensor.numpy().T  # (B, H) -> (H, B) view
        self.dropped = new(h, batch)  # (H, B) the last hidden state after dropout
        self.last = self.inputs[steps, features + 1 :, :]  # (H, B) h_T

        a = self.acts
        self.i, self.f, self.g, self.o = (a[:, j * h : (j + 1) * h] for j in range(4))  # (T, H, B)
        self.if_ = a[:, : 2 * h]  # (T, 2H, B) σ gates, with o
        hidden_rows = self.inputs[:, features + 1 :, :]  # (T + 1, H, B)
        c = self.cells
        # Per step t, in the order the loops use them.
        self.forward_views = [
            (
                *(self.inputs[t], self.gates[t], a[t], self.if_[t], self.o[t], self.f[t], c[t]),
                *(c[t + 1], self.i[t], self.g[t], self.tanh_cells[t], hidden_rows[t + 1]),
            )
            for t in range(steps)
        ]
        l_ifg = self.local[:, : 3 * h].reshape(steps, 3, h, batch)  # (T, 3, H, B) view
        d_ifg = self.d_gates[:, : 3 * h].reshape(steps, 3, h, batch)  # (T, 3, H, B) view
        l_o, d_o = self.local[:, 3 * h :], self.d_gates[:, 3 * h :]  # (T, H, B)
        self.backward_views = [
            (self.carry[t], l_ifg[t], d_ifg[t], l_o[t], d_o[t], self.f[t], self.d_gates[t])
            for t in reversed(range(steps))
        ]
        self.d_cell_3 = self.d_cell[None]  # (H, B) -> (1, H, B), broadcast over i, f, g
        self.slope_parts = np.split(self.slope, 4, axis=1)
        self.local_parts = np.split(self.local, 4, axis=1)
        self.step_inputs_t = self.inputs[:steps].transpose(0, 2, 1)  # (T, B, F + 1 + H) view


class FusedLSTMStep:
    """Adam steps for a one-layer `LSTMForecaster` on the CPU, by hand: on MSE for a
    one-output head, on the negative log-likelihood of models/distribution.py for a
    distributional one.

    The module's parameters become views of one flat buffer for as long as
    this object trains them; `release()` gives them their own storage back.
    """

    def __init__(
        self, model: LSTMForecaster, learning_rate: float, grad_clip: float | None
    ) -> None:
        if model.config.num_layers != 1:
            raise ValueError(f"the fused step handles one LSTM layer, got {model.config}")
        names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
        self.params: list[torch.Tensor] = [
            *(model.get_parameter(f"lstm.{name}") for name in names),
            model.head.weight,
            model.head.bias,
        ]
        if len(list(model.parameters())) != len(self.params):
            raise ValueError("the fused step expects exactly the LSTM and head parameters")
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in self.params):
            raise ValueError("the fused step trains float32 parameters on the CPU")
        self.model = model
        self.hidden_size = h = model.config.hidden_size
        self.dropout = model.config.dropout
        self.distribution = model.config.distribution
        self.outputs = model.outputs
        self.learning_rate = learning_rate
        self.grad_clip = grad_clip
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])  # (P,)
        sizes = [p.numel() for p in self.params]
        for p, view in zip(self.params, self.flat.split(sizes), strict=True):
            p.data = view.view_as(p)
        self.flat_np = self.flat.numpy()  # the same memory
        self.weights = [p.detach().numpy() for p in self.params]  # views of flat_np
        self.grad = torch.zeros_like(self.flat)  # (P,) the gradient that Adam applies
        self.grad_np = self.grad.numpy()
        self.grads = [
            g.reshape(p.shape)
            for p, g in zip(self.params, np.split(self.grad_np, np.cumsum(sizes)[:-1]), strict=True)
        ]
        self.exp_avg = np.zeros_like(self.flat_np)
        self.exp_avg_sq = np.zeros_like(self.flat_np)
        self.adam_scratch = np.zeros_like(self.flat_np)
        self.steps = 0
        # Per gate unit (i, f, g, o): ½ for the σ gates, whose pre-activations tanh sees halved.
        self.half = np.full((4 * h, 1), 0.5, dtype=np.float32)  # (4H, 1)
        self.half[2 * h : 3 * h] = 1.0
        features = model.n_features
        # [W_ih | b_ih + b_hh | W_hh], rows scaled by `half`: (4H, F + 1 + H)
        self.gate_weights = np.zeros((4 * h, features + 1 + h), dtype=np.float32)
        self.bias = np.zeros(4 * h, dtype=np.float32)  # b_ih + b_hh, (4H,)
        self._buffers: dict[tuple[int, int, int], _Buffers] = {}

    def release(self) -> None:
        """Give every parameter its own storage again (the flat buffer is dropped)."""
        for p in self.params:
            p.data = p.data.clone()

    def _buffers_for(self, batch: int, steps: int, features: int) -> _Buffers:
        key = (batch, steps, features)
        if key not in self._buffers:
            self._buffers[key] = _Buffers(batch, steps, features, self.hidden_size, self.outputs)
        return self._buffers[key]

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One Adam step on a batch; returns the batch's summed loss (squared error or NLL).

        Args:
            inputs: windows, shape (B, T, F).
            targets: shape (B,).
        """
        x_in, y = inputs.numpy(), targets.numpy()  # (B, T, F), (B,): no copies
        batch, steps, features = x_in.shape
        buf = self._buffers_for(batch, steps, features)
        w_ih, w_hh, b_ih, b_hh, w_head, b_head = self.weights

        # Forward. The gates' weights [W_ih | b_ih + b_hh | W_hh], rows scaled by ½ for the
        # σ gates: σ(z) = ½·tanh(z/2) + ½, so one tanh activates all four gates.
        weights, half = self.gate_weights, self.half
        _mul(w_ih, half, weights[:, :features])  # (4H, F)
        _add(b_ih, b_hh, self.bias)
        _mul(self.bias, half[:, 0], weights[:, features])  # (4H,)
        _mul(w_hh, half, weights[:, features + 1 :])  # (4H, H)
        np.copyto(buf.x, x_in.transpose(1, 2, 0))  # (B, T, F) -> (T, F, B)
        scratch = buf.scratch
        for step_in, gates, acts, if_, o, f, c_prev, c, i, g, tanh_c, h_next in buf.forward_views:
            _matmul(weights, step_in, gates)  # (4H, F + 1 + H) @ (F + 1 + H, B) -> (4H, B)
            _tanh(gates, acts)
            _mul(if_, 0.5, if_)  # σ = ½·tanh + ½ for i, f and o
            _add(if_, 0.5, if_)
            _mul(o, 0.5, o)
            _add(o, 0.5, o)
            _mul(f, c_prev, c)
            _mul(i, g, scratch)
            _add(c, scratch, c)
            _tanh(c, tanh_c)
            _mul(o, tanh_c, h_next)
        last = buf.last  # (H, B)
        mask = None
        if self.dropout > 0:
            # The draw nn.Dropout makes on a CPU tensor: same RNG use, same mask.
            buf.mask_tensor.bernoulli_(1 - self.dropout).div_(1 - self.dropout)
            mask = buf.mask
            last = _mul(last, mask, buf.dropped)
        _matmul(w_head, last, buf.prediction)  # (K, H) @ (H, B) -> (K, B)
        if self.outputs == 1:
            error = buf.prediction[0]  # (B,), in place
            error += b_head
            error -= y
            d_out = _mul(buf.prediction, 2.0 / batch, buf.d_out)  # d mean(error²), (1, B)
            loss = float(np.dot(error, error))
        else:
            _add(buf.prediction, b_head[:, None], buf.prediction)  # (K, B) + (K, 1)
            d_out = buf.d_out
            loss = nll_numpy(self.distribution, buf.prediction, y, d_out)  # writes d_out

        # Local derivatives of every step at once.
        i, g, o, tanh_c, square = buf.i, buf.g, buf.o, buf.tanh_cells, buf.square
        _mul(buf.acts, buf.acts, buf.slope)
        _sub(buf.acts, buf.slope, buf.slope)  # σ' = σ - σ²
        s_i, s_f, _, s_o = buf.slope_parts
        l_i, l_f, l_g, l_o = buf.local_parts
        _mul(s_i, g, l_i)
        _mul(s_f, buf.cells[:steps], l_f)
        _mul(g, g, square)
        _sub(i, _mul(i, square, square), l_g)  # i·(1 - g²)
        _mul(s_o, tanh_c, l_o)
        _mul(tanh_c, tanh_c, square)
        _sub(o, _mul(o, square, square), buf.carry)  # o·(1 - tanh²C)

        # Backward through time.
        g_ih, g_hh, g_bih, g_bhh, g_head, g_bhead = self.grads
        _matmul(d_out, last.T, g_head)  # (K, B) @ (B, H) -> (K, H)
        np.sum(d_out, axis=1, out=g_bhead)  # (K, B) -> (K,)
        d_hidden, d_cell = buf.d_hidden, buf.d_cell
        if self.outputs == 1:
            _mul(w_head.T, d_out, d_hidden)  # (H, 1) × (1, B) -> (H, B)
        else:
            _matmul(w_head.T, d_out, d_hidden)  # (H, K) @ (K, B) -> (H, B)
        if mask is not None:
            _mul(d_hidden, mask, d_hidden)
        d_cell.fill(0.0)
        w_hh_t = w_hh.T  # (4H, H) -> (H, 4H)
        for t, (carry, l_ifg, d_ifg, l_o, d_o, f, d_gates) in enumerate(buf.backward_views):
            _mul(d_hidden, carry, scratch)
            _add(d_cell, scratch, d_cell)
            _mul(buf.d_cell_3, l_ifg, d_ifg)  # (1, H, B) × (3, H, B)
            _mul(d_hidden, l_o, d_o)
            if t < steps - 1:  # the carries into step 0 are unused
                _mul(d_cell, f, d_cell)
                _matmul(w_hh_t, d_gates, d_hidden)  # (H, 4H) @ (4H, B) -> (H, B)
        # Σ_t d_gates_t @ [x_t; 1; h_{t-1}]ᵀ: (T, 4H, B) @ (T, B, F + 1 + H) -> (4H, F + 1 + H)
        _matmul(buf.d_gates, buf.step_inputs_t, buf.per_step_grads)
        total = buf.per_step_grads.sum(axis=0)  # (T, 4H, K) -> (4H, K)
        np.copyto(g_ih, total[:, :features])
        np.copyto(g_bih, total[:, features])
        np.copyto(g_bhh, total[:, features])
        np.copyto(g_hh, total[:, features + 1 :])

        self._clip_and_update()
        return loss

    def _clip_and_update(self) -> None:
        """clip_grad_norm_ then Adam, the arithmetic of torch's own, on the flat buffer."""
        grad, scratch = self.grad_np, self.adam_scratch
        if self.grad_clip is not None:
            norm = math.sqrt(float(np.dot(grad, grad)))
            coefficient = self.grad_clip / (norm + 1e-6)
            if coefficient < 1.0:
                _mul(grad, np.float32(coefficient), grad)
        beta1, beta2 = _BETAS
        self.steps += 1
        # exp_avg.lerp_(grad, 1 - β1); exp_avg_sq = β2·exp_avg_sq + (1 - β2)·grad²
        _sub(grad, self.exp_avg, scratch)
        _mul(scratch, 1 - beta1, scratch)
        _add(self.exp_avg, scratch, self.exp_avg)
        _mul(self.exp_avg_sq, beta2, self.exp_avg_sq)
        _mul(grad, grad, scratch)
        _mul(scratch, 1 - beta2, scratch)
        _add(self.exp_avg_sq, scratch, self.exp_avg_sq)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        _sqrt(self.exp_avg_sq, scratch)
        _div(scratch, bias_correction2_sqrt, scratch)
        _add(scratch, _EPS, scratch)  # denominator
        _div(self.exp_avg, scratch, scratch)
        _mul(scratch, self.learning_rate / bias_correction1, scratch)
        _sub(self.flat_np, scratch, self.flat_np)
