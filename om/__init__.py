"""Om: tokenizer-free byte-level language modeling with Attentive Recurrent Cells (ARC)."""

__version__ = "0.1.0"

from om.model import (
    ARC,
    ARCformer,
    ARCOutput,
    CausalConvStem,
    CoPE,
    OmConfig,
    OmLLM,
    OmState,
    RoPEEmbeddings,
    causal_attention,
    next_token_loss,
)

__all__ = [
    "ARC",
    "ARCOutput",
    "ARCformer",
    "CausalConvStem",
    "CoPE",
    "OmConfig",
    "OmLLM",
    "OmState",
    "RoPEEmbeddings",
    "causal_attention",
    "next_token_loss",
    "__version__",
]
