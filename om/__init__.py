"""Om: tokenizer-free byte-level language modeling with Attentive Recurrent Cells (ARC).

`from om import OmConfig, OmLLM, ...` re-exports `om.model`. The names are resolved on first use
(PEP 562), so that `import om` (and with it `om --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Re-exported name -> the module that defines it.
_EXPORTS = {
    "ARC": "om.model.arc",
    "ARCOutput": "om.model.arc",
    "ARCformer": "om.model.arc",
    "CausalConvStem": "om.model.stem",
    "CoPE": "om.model.positional",
    "HashedNgramEmbedding": "om.model.ngram",
    "OmConfig": "om.model.config",
    "OmLLM": "om.model.llm",
    "OmState": "om.model.state",
    "RoPEEmbeddings": "om.model.positional",
    "causal_attention": "om.model.attention",
    "next_token_loss": "om.model.loss",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from om.model import (  # noqa: F401
        ARC,
        ARCformer,
        ARCOutput,
        CausalConvStem,
        CoPE,
        HashedNgramEmbedding,
        OmConfig,
        OmLLM,
        OmState,
        RoPEEmbeddings,
        causal_attention,
        next_token_loss,
    )


def __getattr__(name: str):
    """Import a re-exported name on first access (then it is a plain module attribute)."""
    if name == "model":  # `import om; om.model.OmLLM` worked when the package imported it eagerly
        return importlib.import_module("om.model")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'om' has no attribute {name!r}")
    importlib.import_module("om.model")  # the package as a whole, as the eager import did
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
