"""Quality at equal wall-clock on Shakespeare: Om vs memory off vs a plain Transformer vs other
codecs vs classic compressors. The headline table of BENCHMARKS.md.

    python -m bench.quality [--minutes 10] [--only om-bytes,plain,plain-muon,...] [--no-write]

Data: the 42 Shakespeare plays concatenated in sorted order (bench/corpora.py); validation = the
last 10% of the bytes (val.txt), training = the rest (train.txt). Every model trains for the same
wall-clock budget on train.txt (each codec prepares it with `om prepare`, holding out 1% for the
in-training eval) and is scored by `om eval --bytes` (Om) or the same stream NLL with a sliding
window (the plain Transformer) on the same val.txt: bits per original byte.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.compressors import bits_per_byte
from bench.corpora import CACHE, shakespeare_split
from bench.report import load_text, machine, markdown_table, write_section

WORK = CACHE / "quality"

# The Om byte model and training of recipes/shakespeare-bytes.yaml before it took the long-memory
# settings (row om-bytes; the recipe as it is now is row om-bytes-long-memory-muon): the best of the short search in
# bench/recipe_search.py (one memory pass, 32-byte segments, 4 segments per sample, lr 4e-3).
OM_MODEL = dict(dim=128, n_layers=2, n_heads=4, dims_key=[32], dims_value=[32], mlp_ratio=4.0,
                segment_len=32, state_len=8, stem_kernels=[2, 3, 4], positional="rope", dropout=0.0)
TRAIN = dict(micro_batch_size=16, grad_accum=1, segments_per_sample=4, state="reset", lr=4e-3, min_lr=4e-4,
             warmup_steps=50, weight_decay=0.1, grad_clip=1.0, precision="fp32", seed=0, log_every=20,
             eval_every=0, eval_tokens=32768, eval_batch=8, checkpoint_every=0, keep_last=1)
MUON = dict(optimizer="muon", lr=8e-3, min_lr=8e-4)
# Training for long streams (recipes/long-memory.yaml): state carried across steps, a backprop window
# growing from 4 to 8 to 16 segments; LONG_MEMORY_HALF counts half as many, for segments twice as long.
LONG_MEMORY = dict(state="carry", segments_per_sample=None, curriculum=[[0, 4], [1500, 8], [3000, 16]])
LONG_MEMORY_HALF = dict(LONG_MEMORY, curriculum=[[0, 2], [1500, 4], [3000, 8]])
# The patched rows' P=8 model: one dense width-8 convolution, 3 decoder blocks, segments of 16 patches (128 bytes).
PATCHED_8 = dict(patch_size=8, segment_len=16, stem_kernels=[8], decoder_layers=3, dropout=0.1)
# The plain Transformer patched as PATCHED_8 patches Om: a dense width-8 convolution, 8 bytes a trunk position
# (16 in its 128-byte context), 3 decoder blocks, dropout 0.1 in them.
PLAIN_PATCHED_8 = dict(patch_size=8, decoder_layers=3, dropout=0.1)
# Hashed n-gram embeddings (om/model/ngram.py) of sizes 3 to 8, as BLT's byte encoder has: 8192 rows of each table.
NGRAMS = dict(ngram_sizes=[3, 4, 5, 6, 7, 8], ngram_buckets=8192)
# ... and smaller: sizes 3 to 5, 2048 rows each (0.8M parameters against 6.3M).
NGRAMS_SMALL = dict(ngram_sizes=[3, 4, 5], ngram_buckets=2048)
# recipes/shakespeare-bytes.yaml's n-gram embeddings (the speed benchmarks' "headline + n-grams" rows).
RECIPE_NGRAMS = dict(NGRAMS_SMALL, ngram_buckets=8192, ngram_after_stem=True)

VARIANTS = {
    "om-bytes": dict(codec="bytes", model={}),
    "om-bytes-memory-off": dict(codec="bytes", model={"state_len": 0}),
    "om-chars": dict(codec="chars", model={}),
    "om-sentencepiece-1024": dict(codec="sentencepiece", vocab_size=1024, model={}),
    # The long-horizon settings of recipes/long-memory.yaml: carried state, the residual update and
    # a backprop window growing from 4 to 8 to 16 segments.
    "om-bytes-long-memory": dict(codec="bytes", model={"state_update": "residual"},
                                 train=LONG_MEMORY),
    # Patched (recipes/shakespeare-bytes-patched.yaml for P=4): the layers run once per patch of P
    # bytes, so segments hold segment_len * P bytes; a depthwise stem (stem_groups = dim) costs
    # almost nothing per byte. Samples stay 256 bytes long.
    "om-bytes-patched-4": dict(codec="bytes", model={"patch_size": 4, "stem_groups": 128},
                               train={"segments_per_sample": 2}),
    "om-bytes-patched-8": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_groups": 128,
                                                     "stem_kernels": [2, 4, 8]}, train={"segments_per_sample": 2}),
    # P=2: half the trunk steps of unpatched Om, the same 128-byte samples (2 segments of 32 patches).
    "om-bytes-patched-2": dict(codec="bytes", model={"patch_size": 2, "stem_groups": 128},
                               train={"segments_per_sample": 2}),
    # P=4 with a deeper local decoder: 3 residual MLP blocks per byte instead of 1.
    "om-bytes-patched-4-decoder-3": dict(codec="bytes", model={"patch_size": 4, "stem_groups": 128, "decoder_layers": 3},
                                         train={"segments_per_sample": 2}),
    # ... and a context projection of its own for each of the 4 phases (MEGABYTE's split of the
    # global output), so the trunk's output can say different things to each byte of the next patch.
    "om-bytes-patched-4-per-phase": dict(codec="bytes", model={"patch_size": 4, "stem_groups": 128, "decoder_layers": 3,
                                                               "decoder_context": "per_phase"},
                                         train={"segments_per_sample": 2}),
    # ... and a dense stem of one width-4 convolution: the decoder sees a learned mix of all 4 bytes
    # of the current patch instead of a per-channel one (4 D^2 multiply-adds per byte).
    "om-bytes-patched-4-dense-stem": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3,
                                                                "decoder_context": "per_phase"},
                                          train={"segments_per_sample": 2}),
    # The dense stem with one shared context projection (decoder_context shared): which of the two changes helps.
    "om-bytes-patched-4-dense-stem-shared": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3},
                                                 train={"segments_per_sample": 2}),
    # om-bytes-patched-4-dense-stem-shared with ARC layers twice as wide (trunk_dim 256, 4x their weights):
    # running once per 4 bytes, they cost about what the 128-wide layers of unpatched Om cost per byte.
    "om-bytes-patched-4-wide": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3,
                                                          "trunk_dim": 256},
                                    train={"segments_per_sample": 2}),
    # P=8 with the same local decoder (one dense width-8 convolution, 3 blocks); segments of 16
    # patches (128 bytes), samples of 256 bytes.
    "om-bytes-patched-8-dense-stem": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                                "decoder_layers": 3},
                                          train={"segments_per_sample": 2}),
    # Dropout 0.1 on attention weights and residual branches (the decoder's too): 10 minutes on
    # this corpus is several epochs of it, and the training loss ends well below the held-out one.
    "om-bytes-dropout": dict(codec="bytes", model={"dropout": 0.1}),
    "om-bytes-patched-4-dropout": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3,
                                                             "dropout": 0.1},
                                       train={"segments_per_sample": 2}),
    # The best patched row (P=8, dense width-8 stem) with dropout, as om-bytes-dropout is: its
    # training loss ended 0.27 bits/byte below the held-out one without it.
    "om-bytes-patched-8-dropout": dict(codec="bytes", model=PATCHED_8,
                                       train={"segments_per_sample": 2}),
    # The decoder's first block attends among the rows that read one trunk context (MEGABYTE's local model, one
    # attention block); two MLP blocks instead of three keep the cost per byte about that of the row above.
    "om-bytes-patched-8-local-attention": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                                     "decoder_layers": 2, "decoder_attention": True,
                                                                     "dropout": 0.1},
                                               train={"segments_per_sample": 2}),
    "om-bytes-patched-8-local-attention-3": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                                       "decoder_layers": 3, "decoder_attention": True,
                                                                       "dropout": 0.1},
                                                 train={"segments_per_sample": 2}),
    "om-bytes-patched-8-dropout-0.05": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                                  "decoder_layers": 3, "dropout": 0.05},
                                            train={"segments_per_sample": 2}),
    # P=8 with a lean local decoder: its MLP blocks, which run once per byte, set most of the cost
    # per byte of the rows above (3 blocks of 4 x 128 hidden: 393k of about 620k multiply-adds per
    # byte). 3 blocks of 128 hidden, or 2 of 256, read about 2x the bytes of unpatched Om in the same time.
    "om-bytes-patched-8-lean": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                          "decoder_layers": 3, "decoder_mlp_ratio": 1.0, "dropout": 0.1},
                                    train={"segments_per_sample": 2}),
    "om-bytes-patched-8-lean-2x2": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                              "decoder_layers": 2, "decoder_mlp_ratio": 2.0, "dropout": 0.1},
                                        train={"segments_per_sample": 2}),
    # ... and the 2x2 decoder with a trunk twice as wide (4x its weights, 1/8 of their cost per byte):
    # whether trunk capacity makes up for the narrower decoder.
    "om-bytes-patched-8-lean-2x2-wide-trunk": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                                         "decoder_layers": 2, "decoder_mlp_ratio": 2.0, "dropout": 0.1,
                                                                         "trunk_dim": 256, "dims_key": [64], "dims_value": [64]},
                                                   train={"segments_per_sample": 2}),
    # Muon (om.train.optim.MuonAdamW) for the hidden matrices instead of AdamW, at twice the lr: in
    # step-matched runs of 600 steps it reached 2.395 held-out bits/byte against AdamW's 2.542 (2.447 at
    # the same lr), for about 1.2x the time per step on 2 cores (python -m bench.optimizer_step).
    "om-bytes-muon": dict(codec="bytes", model={"dropout": 0.1}, train=MUON),
    # recipes/shakespeare-bytes.yaml's settings (om-bytes-long-memory) with Muon.
    "om-bytes-long-memory-muon": dict(codec="bytes", model={"state_update": "residual"},
                                      train={**LONG_MEMORY, **MUON}),
    "om-bytes-patched-8-muon": dict(codec="bytes", model=PATCHED_8,
                                    train={"segments_per_sample": 2, **MUON}),
    # ... with the state carried across steps and the residual state update (what long-memory does for
    # om-bytes-long-memory-muon), the samples kept at 2 segments of 16 patches.
    "om-bytes-patched-8-carry-muon": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual"},
                                          train={"segments_per_sample": 2, "state": "carry", **MUON}),
    # om-bytes-patched-8-muon trained for long streams as om-bytes-long-memory-muon is: state carried, the
    # residual update, a backprop window growing from 2 to 4 to 8 segments of 128 bytes.
    "om-bytes-patched-8-long-memory-muon": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual"},
                                                train={**LONG_MEMORY_HALF, **MUON}),
    # P=4 (recipes/quickstart-patched.yaml's model: one dense width-4 convolution, 3 decoder blocks) with Muon.
    "om-bytes-patched-4-muon": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3,
                                                          "dropout": 0.1},
                                    train={"segments_per_sample": 2, **MUON}),
    # The comparison rows of om-bytes-muon (dropout 0.1, state reset every sample, Muon): the memory off
    # (MLP widened to the same parameters) and SentencePiece-1024 tokens in place of bytes.
    "om-bytes-memory-off-muon": dict(codec="bytes", model={"state_len": 0, "dropout": 0.1}, train=MUON),
    "om-sentencepiece-1024-muon": dict(codec="sentencepiece", vocab_size=1024, model={"dropout": 0.1}, train=MUON),
    # The two long-memory Muon rows at 1.5x their lr: whether Muon's lr (twice AdamW's) is too low.
    "om-bytes-long-memory-muon-lr12": dict(codec="bytes", model={"state_update": "residual"},
                                           train={**LONG_MEMORY, **MUON, "lr": 1.2e-2, "min_lr": 1.2e-3}),
    "om-bytes-patched-8-long-memory-muon-lr12": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual"},
                                                     train={**LONG_MEMORY_HALF, **MUON, "lr": 1.2e-2, "min_lr": 1.2e-3}),
    # P=2 with a light decoder (one block of 2 x dim), as SentencePiece-1024 puts 2.24 bytes in a position with
    # no per-byte layers at all: the trunk does most of the work, the decoder only the byte after its context.
    # recipes/shakespeare-bytes.yaml's long-memory settings, segments of 32 patches (64 bytes).
    "om-bytes-patched-2-long-memory-muon": dict(codec="bytes", model={"patch_size": 2, "decoder_layers": 1,
                                                                      "decoder_mlp_ratio": 2.0, "state_update": "residual"},
                                                train={**LONG_MEMORY_HALF, **MUON}),
    # SentencePiece-1024 with recipes/shakespeare-bytes.yaml's long-memory settings (segments of 32 tokens, about 72 bytes).
    "om-sentencepiece-1024-long-memory-muon": dict(codec="sentencepiece", vocab_size=1024, model={"state_update": "residual"},
                                                   train={**LONG_MEMORY, **MUON}),
    # om-bytes-patched-8-long-memory-muon with 2 decoder blocks instead of 3: a third less of its cost per byte.
    "om-bytes-patched-8-long-memory-muon-decoder-2": dict(codec="bytes", model={**PATCHED_8, "decoder_layers": 2,
                                                                                "state_update": "residual"},
                                                          train={**LONG_MEMORY_HALF, **MUON}),
    # P=2 as close to SentencePiece-1024's cost per byte as patching gets: no stem (the encoder reads the two bytes'
    # embeddings, a learned embedding of the pair) and a decoder of one block of 1 x dim; the trunk does the work.
    "om-bytes-patched-2-no-stem-long-memory-muon": dict(codec="bytes", model={"patch_size": 2, "stem_kernels": [],
                                                                              "decoder_layers": 1, "decoder_mlp_ratio": 1.0,
                                                                              "state_update": "residual"},
                                                        train={**LONG_MEMORY_HALF, **MUON}),
    # om-bytes-long-memory-muon with segments of 64 bytes (half as many sequential segment steps, the same
    # bytes per sample): whether fewer, larger steps through the layers buy bytes and quality.
    "om-bytes-long-memory-muon-seg64": dict(codec="bytes", model={"state_update": "residual", "segment_len": 64},
                                            train={**LONG_MEMORY_HALF, **MUON}),
    # ... with a depthwise stem (stem_groups = dim: D * 4 multiply-adds per byte instead of D^2 * 4; with Muon its
    # kernels are stepped by AdamW).
    "om-bytes-long-memory-muon-depthwise": dict(codec="bytes", model={"state_update": "residual", "stem_groups": 128},
                                                train={**LONG_MEMORY, **MUON}),
    # The chars codec with the same settings (recipes/shakespeare-chars.yaml).
    "om-chars-long-memory-muon": dict(codec="chars", model={"state_update": "residual"},
                                      train={**LONG_MEMORY, **MUON}),
    # The two long-memory Muon rows (unpatched and patched P=8) with hashed n-gram embeddings: each byte's
    # embedding gains a learned vector for each of the 3- to 8-grams ending at it, for a few integer operations
    # and a gathered sum per byte.
    "om-bytes-long-memory-muon-ngram": dict(codec="bytes", model={"state_update": "residual", **NGRAMS},
                                            train={**LONG_MEMORY, **MUON}),
    "om-bytes-long-memory-muon-ngram-small": dict(codec="bytes", model={"state_update": "residual", **NGRAMS_SMALL},
                                                  train={**LONG_MEMORY, **MUON}),
    "om-bytes-long-memory-muon-ngram-2-6": dict(codec="bytes", model={"state_update": "residual", "ngram_sizes": [2, 3, 4, 5, 6],
                                                                      "ngram_buckets": 2048},
                                                train={**LONG_MEMORY, **MUON}),
    "om-bytes-long-memory-muon-ngram-4096": dict(codec="bytes", model={"state_update": "residual", **NGRAMS_SMALL,
                                                                       "ngram_buckets": 4096},
                                                 train={**LONG_MEMORY, **MUON}),
    # Sizes 3 to 5 with 8192 rows each: whether the bigger tables or the longer n-grams made om-bytes-long-memory-muon-ngram worse.
    "om-bytes-long-memory-muon-ngram-8192": dict(codec="bytes", model={"state_update": "residual", **NGRAMS_SMALL,
                                                                       "ngram_buckets": 8192},
                                                 train={**LONG_MEMORY, **MUON}),
    # The same with the n-gram vectors added to the stem's output instead of its input (model.ngram_after_stem).
    "om-bytes-long-memory-muon-ngram-8192-after-stem": dict(codec="bytes", model={"state_update": "residual", **RECIPE_NGRAMS},
                                                            train={**LONG_MEMORY, **MUON}),
    # ... and with dropout 0.1, as the patched recipe has (the plays are read about twice in 10 minutes).
    "om-bytes-long-memory-muon-ngram-8192-after-stem-dropout": dict(codec="bytes", model={"state_update": "residual", **RECIPE_NGRAMS,
                                                                                       "dropout": 0.1},
                                                                    train={**LONG_MEMORY, **MUON}),
    # SentencePiece-1024 with hashed 2- and 3-grams of its pieces (about 4.5 and 6.7 bytes): whether the tokenizer gains as much.
    "om-sentencepiece-1024-long-memory-muon-ngram": dict(codec="sentencepiece", vocab_size=1024,
                                                         model={"state_update": "residual", "ngram_sizes": [2, 3],
                                                                "ngram_buckets": 4096},
                                                         train={**LONG_MEMORY, **MUON}),
    # recipes/shakespeare-chars.yaml with the bytes recipe's n-gram embeddings (3- to 5-grams, 8192 rows).
    "om-chars-long-memory-muon-ngram": dict(codec="chars", model={"state_update": "residual", **NGRAMS_SMALL,
                                                                  "ngram_buckets": 8192},
                                            train={**LONG_MEMORY, **MUON}),
    # ... with the n-gram vectors added after the stem, as recipes/shakespeare-bytes.yaml now has them.
    "om-chars-long-memory-muon-ngram-after-stem": dict(codec="chars", model={"state_update": "residual", **RECIPE_NGRAMS},
                                                       train={**LONG_MEMORY, **MUON}),
    "om-bytes-patched-8-long-memory-muon-ngram-small": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                                  **NGRAMS_SMALL},
                                                            train={**LONG_MEMORY_HALF, **MUON}),
    # The patched recipe's model spending more on its trunk, which runs once per 8 bytes (a trunk layer
    # costs 1/8 of a byte-level one per byte): 4 layers instead of 2, or layers twice as wide.
    "om-bytes-patched-8-long-memory-muon-ngram-small-deep": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                                       **NGRAMS_SMALL, "n_layers": 4},
                                                                 train={**LONG_MEMORY_HALF, **MUON}),
    "om-bytes-patched-8-long-memory-muon-ngram-small-wide": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                                       **NGRAMS_SMALL, "trunk_dim": 256,
                                                                                       "dims_key": [64], "dims_value": [64]},
                                                                 train={**LONG_MEMORY_HALF, **MUON}),
    "om-bytes-patched-8-long-memory-muon-ngram": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual", **NGRAMS},
                                                      train={**LONG_MEMORY_HALF, **MUON}),
    # The patched recipe's model with its n-gram vectors added after the stem (model.ngram_after_stem), as the
    # bytes recipe now has them: the local decoder and the patch encoder then read each byte's n-grams directly.
    # 2.120 against 2.096 before the stem (one run each): the patched recipes keep them before it.
    "om-bytes-patched-8-long-memory-muon-ngram-small-after-stem": dict(codec="bytes",
                                                                       model={**PATCHED_8, "state_update": "residual",
                                                                              **NGRAMS_SMALL, "ngram_after_stem": True},
                                                                       train={**LONG_MEMORY_HALF, **MUON}),
    # The patched recipe's model with larger n-gram tables: 8192 rows per size (the unpatched recipe's), then 16384.
    "om-bytes-patched-8-long-memory-muon-ngram-8192": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                              **NGRAMS_SMALL, "ngram_buckets": 8192},
                                                           train={**LONG_MEMORY_HALF, **MUON}),
    "om-bytes-patched-8-long-memory-muon-ngram-16384": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                               **NGRAMS_SMALL, "ngram_buckets": 16384},
                                                            train={**LONG_MEMORY_HALF, **MUON}),
    # The patched recipe's model with a leaner local decoder (2 blocks of 2 x dim instead of 3 of 4 x dim: about
    # 2x the bytes per second), whether its 8192-row n-gram tables now make up what the blocks did; and the
    # recipe's model without dropout, which the unpatched recipe does not use.
    "om-bytes-patched-8-long-memory-muon-ngram-8192-lean": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                                   **NGRAMS_SMALL, "ngram_buckets": 8192,
                                                                                   "decoder_layers": 2, "decoder_mlp_ratio": 2.0},
                                                                train={**LONG_MEMORY_HALF, **MUON}),
    "om-bytes-patched-8-long-memory-muon-ngram-8192-no-dropout": dict(codec="bytes", model={**PATCHED_8, "state_update": "residual",
                                                                                         **NGRAMS_SMALL, "ngram_buckets": 8192,
                                                                                         "dropout": 0.0},
                                                                      train={**LONG_MEMORY_HALF, **MUON}),
    # P=8 spending on the trunk, which runs once per 8 bytes (a layer there costs 1/8 of one at
    # byte level): 4 layers instead of 2, or layers twice as wide (trunk_dim 256).
    "om-bytes-patched-8-deep": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                          "decoder_layers": 3, "n_layers": 4},
                                    train={"segments_per_sample": 2}),
    "om-bytes-patched-8-wide": dict(codec="bytes", model={"patch_size": 8, "segment_len": 16, "stem_kernels": [8],
                                                          "decoder_layers": 3, "trunk_dim": 256, "dims_key": [64],
                                                          "dims_value": [64]},
                                    train={"segments_per_sample": 2}),
    # om-bytes-patched-4-dropout trained for long streams as om-bytes-long-memory is (state
    # carried, the residual update, a backprop window growing from 4 to 8 to 16 segments): om eval
    # scores the held-out plays as one stream of about 4,000 segments of 128 bytes.
    "om-bytes-patched-4-long-memory": dict(codec="bytes", model={"patch_size": 4, "stem_kernels": [4], "decoder_layers": 3,
                                                                 "state_update": "residual", "dropout": 0.1},
                                           train=LONG_MEMORY),
    # Unpatched with one width-4 convolution instead of widths 2, 3 and 4: the same functions (a sum
    # of causal convolutions is one convolution of the widest width) for 4/9 of the stem's multiply-adds.
    "om-bytes-stem-4": dict(codec="bytes", model={"stem_kernels": [4]}),
    # P=4 spending the compute it saves per byte on a deeper trunk: 4 layers instead of 2.
    "om-bytes-patched-4-deep": dict(codec="bytes", model={"patch_size": 4, "stem_groups": 128, "n_layers": 4},
                                    train={"segments_per_sample": 2}),
    # P=4 trained for long streams: 4 segments of 16 patches (3 state handoffs per sample rather
    # than 1) and the state carried across steps with the residual update (recipes/long-memory.yaml).
    "om-bytes-patched-4-carry": dict(codec="bytes", model={"patch_size": 4, "segment_len": 16, "stem_groups": 128,
                                                           "state_update": "residual"},
                                     train={"segments_per_sample": 4, "state": "carry"}),
}


def _now() -> str:
    """When a row was measured (UTC, to the minute): rows of different sessions are not side by side."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=True, text=True, **kwargs)


def prepared(codec: str, vocab_size: int | None, train_txt: Path) -> Path:
    out = WORK / f"dataset-{codec}{vocab_size or ''}"
    if not (out / "meta.json").exists():
        argv = ["om", "prepare", str(train_txt), "-o", str(out), "--codec", codec, "--val-fraction", "0.01", "--force"]
        if vocab_size:
            argv += ["--vocab-size", str(vocab_size)]
        run(argv)
    return out


def param_count(model: dict, vocab_size: int) -> int:
    from om import OmConfig, OmLLM

    return OmLLM(OmConfig(**{**model, "vocab_size": vocab_size})).num_parameters()


def memory_off_model(base: dict, vocab_size: int) -> dict:
    """state_len 0 drops the read/write projections; widen the MLP until the parameter counts match."""
    target = param_count(base, vocab_size)
    best = min(
        (abs(param_count({**base, "state_len": 0, "mlp_ratio": r / 8}, vocab_size) - target), r / 8)
        for r in range(32, 129)
    )
    return {**base, "state_len": 0, "mlp_ratio": best[1]}


def train_om(name: str, dataset: Path, model: dict, minutes: float, train: dict | None = None) -> Path:
    from om.data import open_dataset

    vocab = open_dataset(dataset).codec.vocab_size
    recipe = {
        "model": {**model, "vocab_size": vocab},
        "data": {"dataset": str(dataset)},
        "train": {**(train or TRAIN), "max_minutes": minutes},
        "out": {"dir": str(WORK / "runs" / name), "sample_bytes": 0, "progress": False},
    }
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    shutil.rmtree(WORK / "runs" / name, ignore_errors=True)  # a rerun replaces the old run
    run(["om", "train", str(path), "--resume", "never"], stdout=subprocess.DEVNULL)
    return WORK / "runs" / name


def last_train_row(run_dir: Path) -> dict:
    """The last `train` event of a run's metrics.jsonl ({} if it logged none)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ([r for r in rows if r.get("event") == "train"] or [{}])[-1]


def eval_om(run_dir: Path, val_txt: Path) -> dict:
    out = run(["om", "eval", str(run_dir), str(val_txt), "--bytes", "--json"], capture_output=True)
    return json.loads(out.stdout)


def train_plain(dataset: Path, minutes: float, val_txt: Path, optimizer: dict | None = None, ngrams: dict | None = None) -> dict:
    """The plain Transformer with Om's training settings (same batches, optimizer and schedule);
    optimizer: TRAIN's optimizer, lr and min_lr replaced (MUON); ngrams: more `PlainTransformer`
    arguments, its hashed n-gram embeddings (`ngram_sizes`, `ngram_buckets`) and patching
    (`patch_size`, `decoder_layers`, `dropout`), none if None."""
    from bench.plain_transformer import PlainTransformer
    from om.data import open_dataset
    from om.train.batches import BatchSampler
    from om.train.optim import make_optimizer
    from om.train.schedule import budget_progress, learning_rate

    ds = open_dataset(dataset)
    context = OM_MODEL["segment_len"] * TRAIN["segments_per_sample"]
    torch.manual_seed(TRAIN["seed"])
    m = OM_MODEL
    model = PlainTransformer(ds.codec.vocab_size, m["dim"], m["n_layers"], m["n_heads"], context, m["mlp_ratio"], **(ngrams or {}))
    sampler = BatchSampler(ds.split("train"), context, TRAIN["micro_batch_size"], 1, TRAIN["seed"], "reset")
    t = {"optimizer": "adamw", **TRAIN, **(optimizer or {})}
    optimizer = make_optimizer(model, t["lr"], t["weight_decay"], (0.9, 0.95), 1e-8, t["optimizer"])
    start, step, seen = time.perf_counter(), 0, 0
    while (elapsed := time.perf_counter() - start) < minutes * 60:
        progress = budget_progress(step, seen, elapsed, None, None, minutes, t["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, t["lr"], t["min_lr"], t["warmup_steps"])
        b = sampler.batch(step, 0)
        loss, _ = model.loss(b.inputs, b.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += b.targets.numel()
        step += 1
    train_seconds = time.perf_counter() - start
    model.eval()
    data = val_txt.read_bytes()
    ids = torch.from_numpy(np.concatenate([[ds.codec.doc_sep_id], np.frombuffer(data, dtype=np.uint8)]).astype(np.int64))
    nll = model.stream_nll(ids)
    return {"bits_per_byte": nll / math.log(2) / len(data), "parameters": model.num_parameters(),
            "train_bytes": seen, "train_seconds": train_seconds, "steps": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="train nothing: rewrite the table from results.json")
    args = parser.parse_args()
    split = shakespeare_split()
    if split is None:
        print("bench.quality: the Shakespeare corpus is unavailable; skipping", file=sys.stderr)
        return
    train_txt, val_txt = split
    WORK.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.only.split(","))) or set(VARIANTS) | {"plain", "compressors"}
    if args.table_only:
        wanted = set()
    results: dict[str, dict] = {}
    results_file = WORK / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())

    for name, variant in VARIANTS.items():
        if name not in wanted:
            continue
        dataset = prepared(variant["codec"], variant.get("vocab_size"), train_txt)
        vocab = json.loads((dataset / "meta.json").read_text())["vocab_size"]
        model = {**OM_MODEL, **variant["model"]}
        if variant["model"].get("state_len") == 0:
            model = memory_off_model({**OM_MODEL, **{k: v for k, v in variant["model"].items() if k != "state_len"}}, vocab)
        train = {k: v for k, v in {**TRAIN, **variant.get("train", {})}.items() if v is not None}
        run_dir = train_om(name, dataset, model, args.minutes, train)
        report = eval_om(run_dir, val_txt)
        last = last_train_row(run_dir)
        results[name] = {"bits_per_byte": report["bits_per_byte"], "parameters": param_count(model, vocab),
                         "train_bytes": last.get("bytes"), "steps": last.get("step"), "model": model,
                         "train": variant.get("train", {}), "measured": _now()}
        results_file.write_text(json.dumps(results, indent=2))
    # plain-muon-ngram with the n-gram embeddings of recipes/shakespeare-bytes.yaml (3- to 5-grams, 8192 rows);
    # plain-muon-ngram-patched-8 patched as recipes/shakespeare-bytes-patched.yaml patches Om (PLAIN_PATCHED_8).
    for name, optimizer, ngrams in (("plain", None, None), ("plain-muon", MUON, None),
                                    ("plain-muon-ngram", MUON, {**NGRAMS_SMALL, "ngram_buckets": 8192}),
                                    ("plain-muon-ngram-patched-8", MUON, {**NGRAMS_SMALL, "ngram_buckets": 8192, **PLAIN_PATCHED_8})):
        if name in wanted:
            row = train_plain(prepared("bytes", None, train_txt), args.minutes, val_txt, optimizer, ngrams)
            results[name.replace("plain", "plain-transformer")] = {**row, "train": optimizer or {}, "model": ngrams or {},
                                                                   "measured": _now()}
            results_file.write_text(json.dumps(results, indent=2))
    if "compressors" in wanted:
        for name, bpb in bits_per_byte(val_txt).items():
            if bpb is not None:
                results[name] = {"bits_per_byte": bpb}
        results_file.write_text(json.dumps(results, indent=2))

    rows = []
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["bits_per_byte"]):
        rows.append([name, f"{r['bits_per_byte']:.3f}", f"{r['parameters']:,}" if r.get("parameters") else "",
                     f"{r['train_bytes']:,}" if r.get("train_bytes") else "", r.get("steps") or "", r.get("measured", "")])
    table = markdown_table(["row", "val bits/byte", "parameters", "training bytes seen", "steps", "measured (UTC)"], rows)
    print(table)
    if not args.no_write:
        body = (
            "## 1. Quality at equal wall-clock (Shakespeare)\n\n"
            f"Machine: {machine()}; load average when written: {load_text()}\n\n"
            f"Command: `python -m bench.quality --minutes {args.minutes:g}`\n\n"
            f"Data: 42 Shakespeare plays (5,057,198 bytes), validation = last 10% ({val_txt.stat().st_size:,} bytes), "
            f"{args.minutes:g} minutes of training per model on 2 cores. Om model: `{OM_MODEL}`; training: `{TRAIN}`. "
            "Memory off: the same with state_len 0 and the MLP widened to match parameters. Plain Transformer: "
            "`bench/plain_transformer.py`, same width/depth/heads, context = segments_per_sample x segment_len, "
            "evaluated with a sliding window of stride context/2. Compressors: 8 x compressed size / size of val.txt.\n\n"
            + table
            + "\n\nRows that change the Om model or training (everything else as above):\n\n"
            + "\n".join(f"- {name}: model `{VARIANTS[name]['model']}`, training `{VARIANTS[name].get('train', {})}`"
                        for name in results if VARIANTS.get(name, {}).get("model") or VARIANTS.get(name, {}).get("train"))
            + "".join(f"\n- {name}: training `{r['train']}`" + (f", model `{r['model']}`" if r.get("model") else "")
                      for name, r in results.items() if name.startswith("plain-transformer") and r.get("train"))
        )
        write_section("quality", body)


if __name__ == "__main__":
    main()
