"""The model card: README.md in the final checkpoint of a run, saying what the model is and how to use it.

It is written into the checkpoint folder with the other files (so it appears with them, atomically)
but is not in trainer.json's checksum list, so it can be edited; `om eval`, `om sample` and
`load_checkpoint` never read it. Every number in it comes from trainer.json, the dataset and the
config, so the card and the checkpoint cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD_FILE = "README.md"


def _yaml_block(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None).rstrip("\n")


def model_card(
    checkpoint: Path,
    recipe: dict,
    trainer: dict,
    parameters: int,
    codec: dict,
    dataset: dict,
    stop: str | None,
) -> str:
    """The README.md text of final checkpoint `checkpoint`.

    `recipe`: the resolved recipe; `trainer`: the checkpoint's trainer.json fields (step,
    tokens_seen, bytes_seen, elapsed_s, last_eval, om_version, torch_version); `codec`: {"name",
    "vocab_size"}; `dataset`: {"path", "fingerprint", "train_tokens", "train_bytes", "val_tokens",
    "val_bytes"}; `stop`: the stop rule that ended the run.
    """
    ckpt = str(checkpoint)
    last = trainer.get("last_eval") or {}
    sl = last.get("val_slice") or {}
    rows = [
        ("parameters", f"{parameters:,}"),
        ("codec", f"{codec['name']} ({codec['vocab_size']:,} ids)"),
        ("steps", f"{trainer['step']:,}" + (f" (stopped by {stop})" if stop else "")),
        ("bytes seen", f"{trainer['bytes_seen']:,} ({trainer['tokens_seen']:,} tokens)"),
        ("training time", f"{trainer['elapsed_s']:.1f} s"),
        ("dataset", f"`{dataset['path']}`"),
        ("dataset fingerprint", f"`{dataset['fingerprint']}` (sha256 of its meta.json)"),
        (
            "dataset size",
            f"train {dataset['train_tokens']:,} tokens ({dataset['train_bytes']:,} bytes), "
            f"val {dataset['val_tokens']:,} tokens ({dataset['val_bytes']:,} bytes)",
        ),
    ]
    if last:
        rows += [
            ("val bits/byte", f"{last['val_bpb']:.6f} (val loss {last['val_loss']:.6f} nats/token)"),
            ("val slice", f"the first {sl.get('tokens')} tokens of the {sl.get('split', 'val')} split as {sl.get('streams')} streams"),
        ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    repeat = ""
    if sl:
        repeat = (
            f"om eval {ckpt} --val-tokens {sl.get('tokens')} --val-streams {sl.get('streams')}"
            "   # the val bits/byte above, on the training dataset's val split\n"
        )
    prompt = (recipe.get("out") or {}).get("sample_prompt") or ""
    return f"""# Om model: {checkpoint.name}

A byte-level Om language model trained by `om train` (om {trainer.get('om_version', '?')}, torch {trainer.get('torch_version', '?')}).
This is the final checkpoint of its run.

| | |
|---|---|
{table}

## Use it

```bash
om eval {ckpt} FILE...          # bits per byte of any files (or - for stdin)
{repeat}om sample {ckpt} --prompt {_shell_quote(prompt or 'Once ')} --max-bytes 200
```

```python
from om.checkpoint import load_checkpoint

ckpt = load_checkpoint("{ckpt}")   # verifies the checksums in trainer.json
model, codec = ckpt.model, ckpt.codec          # an OmLLM in eval mode, and its codec
```

`trainer.json` holds the exact counters, the RNG state and the checksums of the other files;
this README is not among them (edit it freely) and nothing reads it.

## Recipe

The resolved recipe (every default filled in): `om train` on it with `--out DIR` trains the same model again.

```yaml
{_yaml_block(recipe)}
```
"""


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
