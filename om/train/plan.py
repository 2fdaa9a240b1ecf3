"""`om train --dry-run`: what a run would do, checked the way the run checks it, writing nothing.

The recipe is validated, the data resolved (an existing dataset opened; sources checked and their
cache folder named, not prepared), the model configuration completed with the codec's vocabulary,
the parameters counted and the memory estimated and compared with what the device has free, and
the run's resume decision made (`RunFolder.decide_resume`: the checkpoint `--resume` would
continue, checked against the recipe, and whether it is already complete). Any problem is the
same `OmUserError` the run would raise.
"""

from __future__ import annotations

from pathlib import Path

from om.errors import OmUserError, renamed_keys
from om.model.config import OmConfig
from om.model.sizing import available_bytes, check_fits, parameter_count, training_estimate
from om.train.recipe import Recipe, expand_path
from om.train.run_folder import RunFolder
from om.train.sinks import check_sinks


def _default_vocab(codec: str, vocab_size: int | None) -> int:
    """The vocabulary a codec would get from `om prepare` (chars and SentencePiece: at most)."""
    from om.data.codecs import BytesCodec, CharsCodec

    if codec == "bytes":
        return BytesCodec(vocab_size).vocab_size
    if vocab_size is not None:
        return vocab_size
    if codec == "chars":
        return CharsCodec.DEFAULT_VOCAB_SIZE
    from om.data.spm import DEFAULT_VOCAB_SIZE

    return DEFAULT_VOCAB_SIZE


def _data(recipe: Recipe, source: str) -> dict:
    """The dataset the run would read: opened if it exists, else where it would be prepared."""
    from om.data import open_dataset
    from om.train.recipe_data import prepared_location

    data = recipe.data
    if data.dataset is not None:
        path = Path(expand_path(data.dataset, f"{source}: data.dataset")).resolve()
        if not path.exists():
            raise OmUserError(f"{source}: data.dataset: {path}: no such folder (run `om prepare` first)")
        found = open_dataset(path)
    else:
        path, options = prepared_location(data, source)
        found = None
        if (path / "meta.json").is_file():
            try:
                found = open_dataset(path)
            except OmUserError:
                found = None  # a broken cache entry: the run prepares it again
        if found is None:
            from om.data.codecs import check_codec_name

            check_codec_name(data.codec)
            return {
                "dataset": str(path),
                "prepare": options["sources"],
                "codec": data.codec,
                "vocab_size": _default_vocab(data.codec, data.vocab_size),
                "train_tokens": None,
                "val_tokens": None,
                "fingerprint": None,
            }
    return {
        "dataset": str(found.path),
        "prepare": None,
        "codec": found.codec.name,
        "vocab_size": found.codec.vocab_size,
        "train_tokens": found.num_tokens("train"),
        "val_tokens": found.num_tokens("val"),
        "fingerprint": found.fingerprint,
        "_split": found.split("train"),
    }


def plan_run(recipe: Recipe, run_dir: str | Path, resume: str = "auto", source: str = "recipe") -> dict:
    """Check everything a run of `recipe` into `run_dir` would check first; return the plan as a
    JSON-ready dict (run_dir, resume_from, resume, device, data, model, parameters, tokens_per_step,
    schedule, activation_checkpointing, stop, memory, recipe)."""
    from om.device import resolve_device
    from om.train.batches import BatchSampler

    t = recipe.train
    check_sinks(recipe.out.log_sinks, source)
    with renamed_keys({"device": "train.device"}, where=source):
        device = resolve_device(t.device)
    L = recipe.model.segment_tokens
    lengths = t.sample_lengths(L)
    seq_len = lengths.longest  # the memory estimate is that of the longest samples
    check_fits(training_estimate(recipe.model, t.micro_batch_size, seq_len, t.activation_checkpointing), device, source)
    data = _data(recipe, source)
    split = data.pop("_split", None)
    if "vocab_size" in recipe.model.model_fields_set and recipe.model.vocab_size != data["vocab_size"]:
        raise OmUserError(
            f"{source}: model.vocab_size: {recipe.model.vocab_size} does not match the {data['codec']} codec of "
            f"{data['dataset']} ({data['vocab_size']} ids); leave it out to take it from the data"
        )
    config = OmConfig.model_validate({**recipe.model.model_dump(), "vocab_size": data["vocab_size"]})
    if split is not None:
        BatchSampler(split, lengths, t.micro_batch_size, t.grad_accum, t.seed, t.state)  # enough tokens?
    estimate = training_estimate(config, t.micro_batch_size, seq_len, t.activation_checkpointing)
    check_fits(estimate, device, source)
    free = available_bytes(device)
    resolved = recipe.model_copy(update={"model": config})
    # The run's own decision, made without removing anything (the run removes dead writers' leftovers).
    decision = RunFolder(run_dir).decide_resume(resume, config, resolved, data["fingerprint"], source)
    return {
        "run_dir": str(run_dir),
        "run_dir_exists": Path(run_dir).exists(),
        "resume_from": str(decision.checkpoint) if decision.checkpoint is not None else None,
        "resume": {"step": decision.step, "complete": decision.complete, "notes": decision.notes},
        "device": str(device),
        "data": data,
        "model": config.to_dict(),
        "parameters": parameter_count(config),
        "tokens_per_step": t.micro_batch_size * t.grad_accum * lengths.at(decision.step),  # at the step the run starts
        "schedule": [
            {"step": step, "segments_per_sample": n, "seq_len": n * L, "tokens_per_step": t.micro_batch_size * t.grad_accum * n * L}
            for step, n in t.length_schedule()
        ],
        "activation_checkpointing": t.activation_checkpointing,
        "stop": {"max_steps": t.max_steps, "max_bytes": t.max_bytes, "max_minutes": t.max_minutes},
        "memory": {
            "parameters": estimate.parameters,
            "gradients": estimate.gradients,
            "optimizer": estimate.optimizer,
            "activations": estimate.activations,
            "total": estimate.total,
            "available": free,
        },
        "recipe": resolved.to_dict(),
    }
