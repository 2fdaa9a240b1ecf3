"""Optimizers: AdamW, or Muon for the hidden weight matrices with AdamW for the rest. Weight decay
applies to weight matrices only (never norms, biases or learned initial states)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Newton-Schulz coefficients that push a matrix's singular values towards 1 in five steps (Muon's).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def param_groups(model: nn.Module, weight_decay: float, muon: bool = False) -> list[dict]:
    """Two groups: decayed (matrices / conv kernels / embeddings) and not decayed (norm weights,
    biases, 1-D parameters, the learned initial states). Tied parameters appear once.

    muon: two more groups first, with "muon": True, of the decayed parameters that are hidden weight
    matrices: Linear weights and stacks of per-head matrices (H, d, d'), then convolution kernels
    (out, in, k) ("flatten": True: each is one matrix (out, in * k)); not embedding tables, grouped
    convolutions' kernels nor the output head (`model.head`, where it has one: tied or not, it maps to
    the vocabulary): those stay with AdamW."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)
    no_decay_ids: set[int] = set()
    head = getattr(model, "head", None)
    adamw_ids: set[int] = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    kernel_ids: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or name == "bias" or name == "initial_state" or p.ndim < 2:
                no_decay_ids.add(id(p))
            elif isinstance(module, nn.Embedding):
                adamw_ids.add(id(p))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                # A grouped kernel (a depthwise stem's (D, 1, k)) is independent filters, one per group:
                # flattened to one matrix, orthogonalising would couple them; AdamW steps them instead.
                (kernel_ids if module.groups == 1 else adamw_ids).add(id(p))
    matrices, kernels, decay, no_decay, seen = [], [], [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if id(p) in no_decay_ids:
            no_decay.append(p)
        elif muon and id(p) not in adamw_ids:
            (kernels if id(p) in kernel_ids else matrices).append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if not muon:
        return groups
    return [{"params": matrices, "weight_decay": weight_decay, "muon": True},
            {"params": kernels, "weight_decay": weight_decay, "muon": True, "flatten": True}] + groups


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                   kind: str = "adamw") -> torch.optim.Optimizer:
    """kind "adamw": torch's AdamW over `param_groups`; "muon": `MuonAdamW`."""
    if kind == "muon":
        return MuonAdamW(param_groups(model, weight_decay, muon=True), lr=lr, betas=betas, eps=eps)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def orthogonalized(g: Tensor, steps: int = 5) -> Tensor:
    """g (..., m, n), one matrix or a stack -> the same shape, each matrix with about its singular
    vectors and singular values near 1 (a quintic Newton-Schulz iteration on g / |g|; it trades
    exactness for speed: the values land in roughly [0.7, 1.2], which is all Muon needs)."""
    x = g / (torch.linalg.matrix_norm(g, keepdim=True) + 1e-7)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # iterate on the side with fewer rows: x x^T is then the smaller Gram matrix
        x = x.mT
    m, n = x.shape[-2:]
    # Same iterates, fewer multiply-adds: steps (2 m^2 n + m^3) directly, 2 m^2 n + 4 m^3 steps
    # through the Gram matrix, so the latter once n > 15 m / 8 (5 steps; an MLP's 128 x 512: 0.62x).
    x = _newton_schulz_by_gram(x, steps) if 2 * (steps - 1) * n > 3 * steps * m else _newton_schulz(x, steps)
    return x if wide else x.mT


def _newton_schulz(x: Tensor, steps: int) -> Tensor:
    """x (..., m, n), m <= n, |x| <= 1: x <- a x + (b A + c A^2) x with A = x x^T, `steps` times."""
    a, b, c = _NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _newton_schulz_by_gram(x: Tensor, steps: int) -> Tensor:
    """`_newton_schulz` through (m, m) matrices only: every iterate is Q x for a polynomial Q in
    G = x x^T, whose Gram matrix is Q G Q^T, and each step multiplies Q on the left by the same
    polynomial of it as `_newton_schulz` applies to x."""
    a, b, c = _NS_COEFFICIENTS
    gram0 = x @ x.mT
    q = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device).expand_as(gram0)
    for _ in range(steps):
        gram = q @ gram0 @ q.mT
        q = (a * q) + (b * gram + c * gram @ gram) @ q
    return q @ x


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups marked "muon": True, AdamW on the others; one optimizer, one state dict.

    Muon (Jordan et al. 2024): Nesterov momentum on the gradient, then the update of each matrix
    (out, in), of each matrix of a stack (H, out, in) or, in a group with "flatten": True, of each
    kernel (out, in, k) as one matrix (out, in * k), replaced by its orthogonalised form
    (`orthogonalized`) and scaled by 0.2 sqrt(max(out, in)), which gives it about the RMS of an
    AdamW update at the same lr (Liu et al. 2025, "Muon is scalable"), so one `lr` and schedule
    serve both kinds of groups.
    Decoupled weight decay as AdamW: p <- p (1 - lr wd) - lr update.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5):
        defaults = dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps, weight_decay=0.0, muon=False,
                        flatten=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = self._muon(p, group) if group["muon"] else self._adam(p, group)
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(update, alpha=-lr)
        return loss

    def _muon(self, p: Tensor, group: dict) -> Tensor:
        state, momentum = self.state[p], group["momentum"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"].lerp_(p.grad, 1 - momentum)
        nesterov = p.grad.lerp(buffer, momentum)
        matrix = nesterov.flatten(1) if group["flatten"] else nesterov
        scale = 0.2 * math.sqrt(max(matrix.shape[-2:]))
        return orthogonalized(matrix, group["ns_steps"]).mul_(scale).view_as(p)

    def _adam(self, p: Tensor, group: dict) -> Tensor:
        state, (beta1, beta2) = self.state[p], group["betas"]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        exp_avg = state["exp_avg"].lerp_(p.grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
        return exp_avg.div(denom).div_(1 - beta1**t)
