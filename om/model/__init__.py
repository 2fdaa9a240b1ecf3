"""The Om model and nothing else: config, positional encodings, attention, stem, hashed n-gram
embeddings, ARC/ARCformer, state, `OmLLM`, the next-token loss, and parameter/memory sizing.

Everything that uses a model (checkpoints, evaluation, sampling, context caches, training) lives
outside this package.
"""

from om.model.arc import ARC, ARCformer, ARCOutput
from om.model.attention import causal_attention
from om.model.config import OmConfig
from om.model.llm import OmLLM
from om.model.loss import next_token_loss
from om.model.ngram import HashedNgramEmbedding
from om.model.positional import CoPE, RoPEEmbeddings
from om.model.state import OmState
from om.model.stem import CausalConvStem

__all__ = [
    "ARC",
    "ARCOutput",
    "ARCformer",
    "CausalConvStem",
    "CoPE",
    "HashedNgramEmbedding",
    "OmConfig",
    "OmLLM",
    "OmState",
    "RoPEEmbeddings",
    "causal_attention",
    "next_token_loss",
]
