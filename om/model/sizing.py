"""Memory estimates for a model before it is built, so absurd sizes are refused, not allocated.

`parameter_count(config)` is exact (it equals `OmLLM(config).num_parameters()`) and costs nothing
whatever the sizes; `training_estimate` and `inference_estimate` add the rest (gradients, AdamW
state: two moments per parameter, more than Muon's one for most; activations kept for backward) as
a rough float32 upper bound; `check_fits` compares an estimate with the memory the device has free
and raises `OmUserError` with both numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from om.errors import OmUserError
from om.model.config import OmConfig

FLOAT_BYTES = 4  # parameters, gradients, optimizer state and activations are float32


def parameter_count(c: OmConfig) -> int:
    """The number of parameters of `OmLLM(c)` (a tied head counted once), without building it."""
    D = c.dim
    embed = c.padded_vocab_size * D
    head = 0 if c.tie_embeddings else c.padded_vocab_size * D
    stem = sum(D * D // c.stem_groups * k + D for k in c.stem_kernels)
    stem += len(c.ngram_sizes) * c.ngram_buckets * D  # hashed n-gram tables
    patching = 0
    if c.patch_size > 1:  # encoder, start context, context norm and projection, phases, decoder blocks
        P, W = c.patch_size, c.layer_dim
        projections = P if c.decoder_context == "per_phase" else 1
        patching = P * D * W + W + 2 * W + projections * W * D + P * D + c.decoder_layers * (2 * D + 2 * D * c.decoder_hidden)
        patching += (2 * D + 4 * D * D) if c.decoder_attention else 0  # norm, q|k|v and output projections
    return embed + head + stem + c.n_layers * _layer_parameters(c.trunk_config()) + 2 * D + patching


def _layer_parameters(c: OmConfig) -> int:
    """Parameters of one `ARCformer(c)`."""
    D, H, S = c.dim, c.n_heads, c.state_len
    roles = 3 if S > 0 else 1
    d_in = [D] + c.dims_value[:-1]  # what each pass projects, per head
    arc = sum(roles * H * d_in[p] * (2 * c.dims_key[p] + c.dims_value[p]) for p in range(c.n_passes))  # q|k|v per role
    if S > 0:
        arc -= H * d_in[-1] * c.dims_key[-1]  # read rows have no query in the last pass
    arc += (2 if S > 0 else 1) * H * c.dims_value[-1] * D  # proj_out (+ proj_state)
    if "cope" in c.positional:
        arc += sum(c.cope_positions * dk for dk in c.dims_key)
    norms = 3 if S > 0 else 2  # before ARC, before the MLP, and on the state where it is read
    layer = norms * 2 * D + arc + 2 * D * c.mlp_hidden + S * D  # LayerNorms, ARC, MLP, initial state
    if c.state_update == "gated" and S > 0:
        layer += D * D + D  # the state gate
    return layer


def _segment_activations(c: OmConfig) -> int:
    """Floats one layer keeps for backward per sample and segment (a generous count)."""
    c = c.trunk_config()
    D, H, S, L = c.dim, c.n_heads, c.state_len, c.segment_len
    rows = 2 * S + L
    widths = 4 * D * L + 2 * D * S + 2 * L * c.mlp_hidden  # norms, residuals, MLP in/out
    attention = 0
    for dk, dv in zip(c.dims_key, c.dims_value):
        attention += H * rows * (4 * dk + 2 * dv)  # q, k (before and after RoPE), v, output
        attention += H * rows * rows * (2 + (6 if "cope" in c.positional else 0))  # scores, probabilities
    return widths + attention + H * c.dims_value[-1] * (L + S)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed, by part; `total` is their sum. `what` says for what (for messages)."""

    what: str
    parameters: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = [f"parameters {format_bytes(self.parameters)}"]
        if self.gradients:
            parts.append(f"gradients {format_bytes(self.gradients)}")
        if self.optimizer:
            parts.append(f"optimizer state {format_bytes(self.optimizer)}")
        parts.append(f"activations {format_bytes(self.activations)}")
        return f"about {format_bytes(self.total)} ({', '.join(parts)}) {self.what}"


def training_estimate(c: OmConfig, micro_batch_size: int, seq_len: int, activation_checkpointing: bool = False) -> MemoryEstimate:
    """Training one micro batch of `seq_len` tokens per sample with AdamW. `activation_checkpointing`
    (`OmLLM.activation_checkpointing`): each segment keeps only its input, its output and the layer
    states it starts from, and one segment's layers are recomputed (all their activations) at a time."""
    n = parameter_count(c)
    segments = -(-seq_len // c.segment_tokens)
    if activation_checkpointing:
        kept = 2 * c.segment_len * c.layer_dim + c.n_layers * c.state_len * c.layer_dim  # input and output rows, states
        per_sample = segments * kept + c.n_layers * _segment_activations(c)
    else:
        per_sample = c.n_layers * segments * _segment_activations(c)
    per_sample += seq_len * _stem_width(c) + 3 * seq_len * c.padded_vocab_size  # stem; logits, float copy, grad
    recomputed = ", activation checkpointing" if activation_checkpointing else ""
    return MemoryEstimate(
        what=f"to train with micro batches of {micro_batch_size} x {seq_len} tokens{recomputed}",
        parameters=n * FLOAT_BYTES,
        gradients=n * FLOAT_BYTES,
        optimizer=2 * n * FLOAT_BYTES,
        activations=micro_batch_size * per_sample * FLOAT_BYTES,
    )


def _stem_width(c: OmConfig) -> int:
    """Floats per token kept by the embedding, the stem's convolutions and a patched model's decoder."""
    decoder = 0 if c.patch_size == 1 else 3 * c.dim + c.decoder_layers * (2 * c.dim + 2 * c.decoder_hidden)
    if c.decoder_attention:  # norm, q|k|v, attention output, its projection
        decoder += 6 * c.dim
    return c.dim * (2 + 2 * len(c.stem_kernels)) + decoder


def inference_estimate(c: OmConfig, batch_size: int = 1) -> MemoryEstimate:
    """Running the model without gradients, one segment at a time, `batch_size` streams."""
    n = parameter_count(c)
    per_segment = _segment_activations(c) + c.segment_tokens * (_stem_width(c) + c.padded_vocab_size)
    return MemoryEstimate(
        what="to run the model",
        parameters=n * FLOAT_BYTES,
        gradients=0,
        optimizer=0,
        activations=batch_size * per_segment * FLOAT_BYTES,
    )


def format_bytes(n: int | float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _cgroup_free() -> int | None:
    """What the cgroup (v2) memory limit leaves, when there is one."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return None
    return max(0, int(limit) - used) if limit.isdigit() else None


def available_bytes(device="cpu") -> int | None:
    """Free memory on `device` (a torch device or name): CUDA's free memory, else MemAvailable
    from /proc/meminfo (capped by a cgroup limit). None when it cannot be told."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    if kind != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = None
    cgroup = _cgroup_free()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def check_fits(estimate: MemoryEstimate, device="cpu", where: str = "") -> None:
    """Raise `OmUserError` when `estimate` exceeds the free memory of `device` (unknown: pass)."""
    free = available_bytes(device)
    if free is None or estimate.total <= free:
        return
    prefix = f"{where}: " if where else ""
    raise OmUserError(
        f"{prefix}the model needs {estimate.describe()}, but {device} has {format_bytes(free)} available; "
        "make the model smaller (dim, n_layers, segment_len, state_len) or the batch (micro_batch_size, segments_per_sample)"
    )
