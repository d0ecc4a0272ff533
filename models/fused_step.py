"""One training step of the one-layer LSTMForecaster, written out by hand.

On a CPU the reference problem is tiny (batch 32, window 10, hidden 32), so
a step's time is per-operation overhead, not arithmetic: autograd records
and replays every op, `nn.LSTM`'s oneDNN kernels carry a fixed cost per
call, and `torch.optim.Adam` and `clip_grad_norm_` add Python work over six
parameters. This step computes the same numbers (to float rounding) with
about 165 plain tensor ops:

- forward: the input projection of every time step in one matmul, then per
  step one matmul and six elementwise ops into buffers allocated once per
  batch shape;
- backward through time: the local derivatives of all steps in a few
  vectorised ops, then per step one matmul and four elementwise ops; the
  weight gradients of all steps in two matmuls;
- clipping and Adam: a handful of ops on one flat buffer that the module's
  parameters are views of, so the module always holds the current weights.

The dropout mask is drawn exactly as `nn.Dropout` draws it, so with the same
seed this step and autograd + `torch.optim.Adam` give the same weights
(tests/models/test_training.py checks both gradients and whole fits).
"""

import math

import torch

from models.lstm import LSTMForecaster

_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the autograd path uses
_EPS = 1e-8


class _Buffers:
    """Work arrays for one (batch, window, features) shape, and the per-step views of them.

    Cutting a view costs about as much as a small op, so every view the time
    loops use is cut once here rather than on every step.
    """

    def __init__(self, batch: int, steps: int, features: int, hidden: int, device: torch.device):
        def new(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, device=device)

        h = hidden
        self.x = new(steps, batch, features)  # (T, B, F) the batch, time-major
        self.gates = new(steps, batch, 4 * h)  # (T, B, 4H) pre-activations i, f, g, o
        self.acts = new(steps, batch, 4 * h)  # (T, B, 4H) activated gates
        self.cells = new(steps + 1, batch, h)  # (T + 1, B, H), cells[0] = 0
        self.hidden = new(steps + 1, batch, h)  # (T + 1, B, H), hidden[0] = 0
        self.tanh_cells = new(steps, batch, h)  # (T, B, H)
        # d loss / d pre-activation per unit of d cell (i, f, g) or d hidden (o)
        self.local = new(steps, batch, 4 * h)  # (T, B, 4H)
        self.carry = new(steps, batch, h)  # (T, B, H) d cell / d hidden through tanh(C)
        self.d_gates = new(steps, batch, 4 * h)  # (T, B, 4H)
        self.d_cell = new(batch, h)  # (B, H)
        self.d_hidden = new(batch, h)  # (B, H)
        self.slope = new(steps, batch, 4 * h)  # (T, B, 4H) σ' of every gate

        i, f, g, o = self.acts.split(h, dim=-1)  # (T, B, 4H) -> 4 × (T, B, H)
        self.i, self.f, self.g, self.o = i, f, g, o
        g_pre = self.gates[..., 2 * h : 3 * h]  # (T, B, H)
        d_ifg = self.d_gates[..., : 3 * h].unflatten(-1, (3, h))  # (T, B, 3, H)
        l_ifg = self.local[..., : 3 * h].unflatten(-1, (3, h))  # (T, B, 3, H)
        l_o = self.local[..., 3 * h :]  # (T, B, H)
        d_o = self.d_gates[..., 3 * h :]  # (T, B, H)
        c, hs = self.cells, self.hidden
        # Per step t, in the order the loops use them.
        self.forward_views = [
            (
                *(self.gates[t], hs[t], self.acts[t], g_pre[t], g[t], f[t]),
                *(c[t], c[t + 1], i[t], self.tanh_cells[t], o[t], hs[t + 1]),
            )
            for t in range(steps)
        ]
        self.backward_views = [
            (self.carry[t], l_ifg[t], d_ifg[t], l_o[t], d_o[t], f[t], self.d_gates[t])
            for t in reversed(range(steps))
        ]
        self.d_cell_3 = self.d_cell.unsqueeze(1)  # (B, H) -> (B, 1, H), broadcast over i, f, g
        self.x_2d = self.x.view(steps * batch, features)  # (T·B, F)
        self.gates_2d = self.gates.view(steps * batch, 4 * h)  # (T·B, 4H)
        self.d_gates_2d = self.d_gates.view(steps * batch, 4 * h)  # (T·B, 4H)
        self.hidden_2d = hs[:steps].view(steps * batch, h)  # h_{t-1} of every step, (T·B, H)
        self.slope_parts = self.slope.split(h, dim=-1)
        self.local_parts = self.local.split(h, dim=-1)


class FusedLSTMStep:
    """Adam steps on MSE for a one-layer `LSTMForecaster`, by hand, on its device.

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
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.dropout = model.config.dropout
        self.learning_rate = learning_rate
        self.grad_clip = grad_clip
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])  # (P,)
        self.grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.steps = 0
        sizes = [p.numel() for p in self.params]
        for p, view in zip(self.params, self.flat.split(sizes), strict=True):
            p.data = view.view_as(p)
        self.grads = [
            g.view_as(p) for p, g in zip(self.params, self.grad.split(sizes), strict=True)
        ]
        self._buffers: dict[tuple[int, int, int], _Buffers] = {}

    def release(self) -> None:
        """Give every parameter its own storage again (the flat buffer is dropped)."""
        for p in self.params:
            p.data = p.data.clone()

    def _buffers_for(self, batch: int, steps: int, features: int) -> _Buffers:
        key = (batch, steps, features)
        if key not in self._buffers:
            self._buffers[key] = _Buffers(
                batch, steps, features, self.hidden_size, self.flat.device
            )
        return self._buffers[key]

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One Adam step on a batch; returns the batch's summed squared error (a 0-d tensor).

        Args:
            inputs: windows, shape (B, T, F).
            targets: shape (B,).
        """
        batch, steps, features = inputs.shape
        buf = self._buffers_for(batch, steps, features)
        w_ih, w_hh, b_ih, b_hh, w_head, b_head = self.params
        g_ih, g_hh, g_bih, g_bhh, g_head, g_bhead = self.grads

        # Forward; gate blocks along the last axis are i, f, g, o (nn.LSTM's order).
        buf.x.copy_(inputs.transpose(0, 1))  # (B, T, F) -> (T, B, F)
        torch.addmm(b_ih + b_hh, buf.x_2d, w_ih.t(), out=buf.gates_2d)  # (T·B, F) -> (T·B, 4H)
        w_hh_t = w_hh.t()  # (4H, H) -> (H, 4H)
        for gates, h_prev, acts, g_pre, g, f, c_prev, c, i, tanh_c, o, h in buf.forward_views:
            gates.addmm_(h_prev, w_hh_t)  # (B, H) @ (H, 4H) -> (B, 4H)
            torch.sigmoid(gates, out=acts)  # g's sigmoid is overwritten next
            torch.tanh(g_pre, out=g)
            torch.mul(f, c_prev, out=c)
            c.addcmul_(i, g)
            torch.tanh(c, out=tanh_c)
            torch.mul(o, tanh_c, out=h)
        last = buf.hidden[steps]  # (B, H)
        mask = None
        if self.dropout > 0:
            # The draw nn.Dropout makes on a CPU tensor: same RNG use, same mask.
            mask = torch.empty_like(last).bernoulli_(1 - self.dropout).div_(1 - self.dropout)
            last = last * mask
        prediction = torch.addmm(b_head, last, w_head.t()).squeeze(1)  # (B, H) -> (B, 1) -> (B,)
        error = prediction - targets  # (B,)
        d_out = (error * (2.0 / batch)).unsqueeze(1)  # d mean((pred - y)²) / d pred, (B, 1)

        # Local derivatives of every step at once.
        i, g, o, tanh_c = buf.i, buf.g, buf.o, buf.tanh_cells
        torch.addcmul(buf.acts, buf.acts, buf.acts, value=-1, out=buf.slope)  # σ' = σ - σ²
        s_i, s_f, _, s_o = buf.slope_parts
        l_i, l_f, l_g, l_o = buf.local_parts
        torch.mul(s_i, g, out=l_i)
        torch.mul(s_f, buf.cells[:steps], out=l_f)
        torch.addcmul(i, i * g, g, value=-1, out=l_g)  # i·(1 - g²)
        torch.mul(s_o, tanh_c, out=l_o)
        torch.addcmul(o, o * tanh_c, tanh_c, value=-1, out=buf.carry)  # o·(1 - tanh²C)

        # Backward through time.
        torch.mm(d_out.t(), last, out=g_head)  # (1, B) @ (B, H) -> (1, H)
        torch.sum(d_out, 0, out=g_bhead)
        d_hidden, d_cell = buf.d_hidden, buf.d_cell
        torch.mm(d_out, w_head, out=d_hidden)  # (B, 1) @ (1, H) -> (B, H)
        if mask is not None:
            d_hidden.mul_(mask)
        d_cell.zero_()
        for t, (carry, l_ifg, d_ifg, l_o, d_o, f, d_gates) in enumerate(buf.backward_views):
            d_cell.addcmul_(d_hidden, carry)
            torch.mul(buf.d_cell_3, l_ifg, out=d_ifg)  # (B, 1, H) × (B, 3, H)
            torch.mul(d_hidden, l_o, out=d_o)
            if t < steps - 1:  # the carries into step 0 are unused
                d_cell.mul_(f)
                torch.mm(d_gates, w_hh, out=d_hidden)  # (B, 4H) @ (4H, H) -> (B, H)
        torch.mm(buf.d_gates_2d.t(), buf.hidden_2d, out=g_hh)  # (4H, T·B) @ (T·B, H)
        torch.mm(buf.d_gates_2d.t(), buf.x_2d, out=g_ih)  # (4H, T·B) @ (T·B, F)
        torch.sum(buf.d_gates_2d, 0, out=g_bih)
        g_bhh.copy_(g_bih)

        self._clip_and_update()
        return torch.dot(error, error)

    def _clip_and_update(self) -> None:
        """clip_grad_norm_ then Adam, the arithmetic of torch's own, on the flat buffer."""
        if self.grad_clip is not None:
            norm = torch.linalg.vector_norm(self.grad)
            self.grad.mul_(torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0))
        beta1, beta2 = _BETAS
        self.steps += 1
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(_EPS)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.learning_rate / bias_correction1)
