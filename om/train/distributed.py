"""Training in several processes launched by torchrun: the process group, each rank's share of the
batch, and the few collectives the training loop needs.

torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; with
`WORLD_SIZE` > 1, `Distributed.setup` joins the process group (nccl on CUDA, gloo on CPU unless
the recipe says otherwise) and the model is wrapped in DistributedDataParallel. Without torchrun
(or with one process) every method here is a no-op, so the loop has one code path.

The batch shard: an optimizer step is `grad_accum` micro batches, numbered 0..grad_accum-1 as in
one process; rank r computes the contiguous block `r*k .. r*k+k-1` (k = grad_accum / world size)
and DDP averages the gradients. So a run gives the same updates (up to float summation order)
with any number of processes, and its checkpoints resume with any number that divides
`grad_accum`.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Iterator

import numpy as np
import torch
from torch import nn

from om.errors import OmUserError


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 without torchrun)."""
    return _env_int("RANK", 0)


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise OmUserError(f"environment variable {name}={value!r} is not an integer (it is set by torchrun)") from None


class Distributed:
    """This process's place in a training run, and the collectives the loop uses.

    Attributes: rank, world (process count), local_rank (rank on this machine), device (the torch
    device this rank trains on), backend ("gloo"/"nccl", None in one process). `is_main` is rank 0,
    the only rank that writes logs, metrics and checkpoints. Make one with `Distributed.setup`
    (or `Distributed()` for one process); `close()` leaves the process group it joined.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.rank, self.world, self.local_rank = 0, 1, 0
        self.device = device if device is not None else torch.device("cpu")
        self.backend: str | None = None
        self.ddp: nn.Module | None = None
        self._owns_group = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def setup(cls, section, device: torch.device) -> "Distributed":
        """Join torchrun's process group when WORLD_SIZE > 1; `section` is the recipe's
        `distributed` section, `device` the resolved `train.device` (a CUDA device gets this
        rank's LOCAL_RANK as its index)."""
        import torch.distributed as dist

        self = cls(device)
        if env_world_size() <= 1:
            return self
        if not dist.is_available():
            raise OmUserError("this torch build has no torch.distributed; run one process or install a torch with it")
        self.rank, self.world, self.local_rank = env_rank(), env_world_size(), _env_int("LOCAL_RANK", 0)
        if device.type == "cuda":
            local_world = _env_int("LOCAL_WORLD_SIZE", 1)
            if device.index is not None and local_world > 1:
                raise OmUserError(
                    f"train.device: {str(device)!r} names one GPU but torchrun starts {local_world} processes on this machine; "
                    "use auto or cuda (each rank takes the GPU of its LOCAL_RANK)"
                )
            index = device.index if device.index is not None else self.local_rank
            if index >= torch.cuda.device_count():
                count = torch.cuda.device_count()
                raise OmUserError(f"rank {self.rank}: LOCAL_RANK {self.local_rank} has no GPU (this machine has {count})")
            self.device = torch.device("cuda", index)
            torch.cuda.set_device(self.device)
        backend = section.backend
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        if backend == "nccl" and self.device.type != "cuda":
            raise OmUserError(f"distributed.backend: 'nccl' needs CUDA but train.device is {str(self.device)!r}; use gloo or auto")
        if backend == "nccl" and not dist.is_nccl_available():
            raise OmUserError("distributed.backend: this torch build has no nccl; use gloo")
        if dist.is_initialized():  # the caller joined a group already (Python use): take its view
            self.rank, self.world, self.backend = dist.get_rank(), dist.get_world_size(), dist.get_backend()
            return self
        self.backend = backend
        dist.init_process_group(backend, timeout=timedelta(minutes=section.timeout_minutes))
        self._owns_group = True
        return self

    def close(self) -> None:
        """Leave the process group if `setup` joined it."""
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                # Every rank enters the teardown together: a rank that reaches it while rank 0 is
                # still evaluating or writing the last checkpoint was seen to hang in gloo's teardown.
                try:
                    dist.barrier()
                finally:
                    dist.destroy_process_group()
            self._owns_group = False

    # Work sharing ----------------------------------------------------------------------------------
    def micro_indices(self, grad_accum: int) -> list[int]:
        """The micro-batch numbers (0..grad_accum-1 of each optimizer step) this rank computes."""
        if grad_accum % self.world:
            options = ", ".join(str(self.world * k) for k in (1, 2, 4))
            raise OmUserError(
                f"train.grad_accum: {grad_accum} micro batches per step cannot be split over {self.world} processes "
                f"(the global batch is micro_batch_size x grad_accum); set it to a multiple of {self.world} ({options}, ...)"
            )
        k = grad_accum // self.world
        return list(range(self.rank * k, (self.rank + 1) * k))

    @contextmanager
    def local_first(self) -> Iterator[None]:
        """Local rank 0 runs the body first (e.g. preparing a dataset into this machine's cache),
        the other ranks of the machine after it."""
        if self.active and self.local_rank != 0:
            self.barrier()
        yield
        if self.active and self.local_rank == 0:
            self.barrier()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def fork_rng(self, seed: int, step: int) -> None:
        """Give ranks other than 0 their own torch RNG stream (dropout), from (seed, step, rank)."""
        if self.rank > 0:
            torch.manual_seed(int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1, np.uint64)[0]) >> 1)

    # The model -------------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, seq_len: int) -> nn.Module:
        """`model` in DistributedDataParallel (which also copies rank 0's weights to every rank), or
        `model` itself in one process. `seq_len`: tokens of the shortest training sample (with
        `train.curriculum` the lengths change by step; a longer sample uses every parameter a
        shorter one does, so parameters that the shortest leaves unused are the only ones DDP has
        to look for)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # The model's buffers are constants computed from the config: no need to sync them at every
        # forward (the keyword was renamed in torch 2.13).
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync_buffers = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        unused = has_unused_parameters(model, seq_len, self.device)
        self.ddp = DistributedDataParallel(_DetachedState(model), device_ids=ids, find_unused_parameters=unused, **no_sync_buffers)
        return self.ddp

    def sync_grads(self, last: bool):
        """Context for one micro batch's forward and backward: gradients are all-reduced only on
        the rank's last micro batch of the step (`no_sync` on the others)."""
        if self.ddp is None or last:
            return nullcontext()
        return self.ddp.no_sync()

    # Collectives -----------------------------------------------------------------------------------
    def _reduce(self, values: list[float], op: str) -> list[float]:
        if not self.active:
            return list(values)
        import torch.distributed as dist

        comm = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=comm)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks."""
        return self._reduce(list(values), "sum")

    def max(self, value: float) -> float:
        """The largest `value` of all ranks (e.g. elapsed time, so every rank sees the same)."""
        return self._reduce([value], "max")[0]

    def agree_signal(self, received: int | None) -> int | None:
        """The stop signal of the run: SIGINT if any rank got one, else SIGTERM if any did, else
        None. Every rank gets the same answer, so all of them stop after the same step."""
        import signal

        if not self.active:
            return received
        got_int, got_term = self._reduce([float(received == signal.SIGINT), float(received == signal.SIGTERM)], "max")
        return signal.SIGINT if got_int else signal.SIGTERM if got_term else None

    def gather_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Every rank's `tensors` merged on rank 0 (names must not collide); None on other ranks."""
        if not self.active:
            return tensors
        import torch.distributed as dist

        mine = {k: v.detach().cpu() for k, v in tensors.items()}
        parts: list | None = [None] * self.world if self.is_main else None
        dist.gather_object(mine, parts, dst=0)
        if not self.is_main:
            return None
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part)
        return merged


class _DetachedState(nn.Module):
    """`OmLLM` returning its new state detached: `(x, state) -> (logits, new_state.detach())`.

    The training loss never backpropagates into the state a step writes (it is carried detached
    or dropped), and DDP, when it looks for unused parameters, follows every tensor of the output:
    it would wait forever for gradients through the state.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, state=None):
        logits, new_state = self.model(x, state)
        return logits, new_state.detach()


def has_unused_parameters(model: nn.Module, seq_len: int, device: torch.device) -> bool:
    """Whether some trainable parameters get no gradient from the loss of one sample of `seq_len`
    tokens (e.g. the state projections when a sample is a single segment: its written state only
    feeds the next step, detached). DDP must then be told to look for them at every step."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        logits, _ = model(torch.zeros(1, seq_len, dtype=torch.long, device=device))
        logits.float().sum().backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    return unused
