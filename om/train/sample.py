"""A short sample from a trained model, shown at the end of a run."""

from __future__ import annotations


def sample_text(model, codec, prompt: str, max_bytes: int, temperature: float, seed: int = 0) -> str:
    """Generate up to `max_bytes` bytes after `prompt` with `om.sampling.generate`; return text."""
    from om.sampling import generate

    out = b"".join(generate(model, codec, prompt.encode("utf-8"), max_bytes=max_bytes, temperature=temperature, seed=seed))
    return out.decode("utf-8", errors="replace")
