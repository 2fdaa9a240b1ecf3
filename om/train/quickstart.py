"""The built-in default recipe (`om train` with no RECIPE): a copy of recipes/quickstart.yaml.

It is embedded so that an installed package trains without the repository's recipes/ folder;
a test checks that it matches the file.
"""

QUICKSTART_NAME = "quickstart.yaml (built in)"

QUICKSTART_YAML = """\
# Quickstart: a small byte-level Om model trained on this Python's own standard library sources
# (found at run time, nothing to download) for 5 minutes of wall-clock time. It reports validation
# bits per byte and prints a short sample. Each byte's embedding gains hashed 3-, 4- and 5-gram
# embeddings (model.ngram_sizes, README "Hashed n-gram embeddings"): 1.412 bits/byte against 1.510
# without, run one after the other on an AMD EPYC (BENCHMARKS.md "ngram-quickstart"). Their vectors
# join after the stem (model.ngram_after_stem): 1.412 against 1.432 with them before it, and 0.004 to
# 0.007 lower at every evaluation of equal step (BENCHMARKS.md "ngram-after-stem"). Their tables
# have 8192 rows per size: 1.378 against 1.403 with 2048, and 0.028 to 0.055 lower at every
# evaluation of equal step (BENCHMARKS.md "ngram-after-stem" notes).
#
#   om train recipes/quickstart.yaml
#
# The sources are prepared once into $OM_CACHE_DIR/datasets (default ~/.cache/om). bf16 is left
# off: on CPUs without AMX it is slower than fp32 for a model this small.
model:
  dim: 128
  n_layers: 2
  n_heads: 4
  dims_key: [32, 16]
  dims_value: [32, 16]
  mlp_ratio: 4.0
  segment_len: 64
  state_len: 8
  stem_kernels: [2, 3, 4]
  ngram_sizes: [3, 4, 5]
  ngram_buckets: 8192
  ngram_after_stem: true
  positional: rope
data:
  sources: ["{stdlib}"]   # sysconfig.get_paths()["stdlib"]; test/, idlelib/, site-packages/ ... are skipped
  include: ["*.py"]
  codec: bytes
train:
  micro_batch_size: 16
  grad_accum: 1
  segments_per_sample: 2
  state: reset
  max_minutes: 5
  optimizer: muon       # Muon on the weight matrices: 1.50 bits/byte in 5 minutes where AdamW (lr 2e-3) gave 1.65
  lr: 4.0e-3
  min_lr: 4.0e-4
  warmup_steps: 50
  weight_decay: 0.1
  grad_clip: 1.0
  precision: fp32
  seed: 0
  log_every: 25
  eval_every: 500
  eval_bytes: 131072
  checkpoint_every: 500
  keep_last: 2
out:
  dir: runs/quickstart
  sample_bytes: 300
  sample_prompt: "def "
  sample_temperature: 0.7
"""
