"""Om: tokenizer-free byte-level language modeling with Attentive Recurrent Cells (ARC)."""

__version__ = "0.1.0"

from om.arc import ARC, ARCformer, ARCOutput
from om.attention import causal_attention
from om.config import OmConfig
from om.model import OmLLM
from om.positional import CoPE, RoPEEmbeddings
from om.state import OmState
from om.stem import CausalConvStem

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
    "__version__",
]
