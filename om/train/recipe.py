"""Training recipes: the YAML schema, loading, dotted `--set` overrides and one-line errors.

A recipe has five sections: `model` (every `OmConfig` field), `data`, `train`, `out` and
`distributed` (runs of several processes under torchrun). Unknown keys are refused with a "did you
mean" hint; every error is an `OmUserError` of one line that names the recipe file, the key path
and the value.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import reprlib
import sysconfig
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from om.errors import OmUserError, renamed_keys
from om.model.config import OmConfig

_STRICT = ConfigDict(extra="forbid")

# Names (files or folders, matched anywhere, as `om prepare --exclude` does) of standard-library
# parts that are not representative source text: tests, installed packages, IDLE, generated tables.
STDLIB_EXCLUDES = [
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "__pycache__",
]

# Keys of `data` that say how `data.sources` are prepared. A prepared `data.dataset` already has its
# codec and was split when it was prepared, so they are refused next to it rather than ignored.
PREPARE_OPTIONS = ("codec", "vocab_size", "include", "exclude", "stdlib_excludes", "val_fraction", "errors")

# Where training metrics go (`out.log_sinks`): metrics.jsonl, train.csv/eval.csv, TensorBoard events.
LOG_SINKS = ("jsonl", "csv", "tensorboard")


class DataSection(BaseModel):
    """Where the training tokens come from: a prepared dataset folder, or sources to prepare.

    With `sources`, `om train` runs `om prepare` into a cache folder keyed by the sources and the
    codec options ($OM_CACHE_DIR/datasets/<hash>, default ~/.cache/om) and reuses it afterwards.
    """

    model_config = _STRICT

    dataset: str | None = Field(None, description="a folder written by `om prepare`")
    sources: list[str] | None = Field(None, description="files/folders to prepare; {stdlib} and ${ENV} are expanded")
    codec: str = Field("bytes", description="bytes | chars | sentencepiece (with sources)")
    vocab_size: int | None = Field(None, ge=1, description="codec vocabulary size (chars/sentencepiece)")
    include: list[str] = Field(default_factory=list, description="glob patterns of files to take from source folders")
    exclude: list[str] = Field(default_factory=list, description="glob patterns of files to skip")
    stdlib_excludes: bool = Field(True, description="add the standard excludes when a source is {stdlib}")
    val_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="share of the data held out for validation (default: om prepare's)"
    )
    errors: Literal["strict", "replace"] = Field(
        "strict", description="invalid UTF-8 for chars/sentencepiece: strict (an error) or replace (U+FFFD)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> "DataSection":
        if (self.dataset is None) == (self.sources is None):
            raise ValueError("give exactly one of data.dataset (a prepared folder) or data.sources (files to prepare)")
        if self.sources is not None and not self.sources:
            raise ValueError("data.sources is empty")
        return self


class TrainSection(BaseModel):
    """How to train: batch shape, stop rule, optimizer, schedule, precision, eval and checkpoints."""

    model_config = _STRICT

    micro_batch_size: int = Field(8, ge=1, description="samples per forward/backward")
    grad_accum: int = Field(
        1, ge=1, description="micro batches per optimizer step, in total over all processes (each computes grad_accum / processes)"
    )
    segments_per_sample: int = Field(2, ge=1, description="segments each sample backpropagates through")
    state: Literal["reset", "carry"] = Field(
        "reset", description="reset: each sample starts from the learned initial state; carry: rows read contiguous streams"
    )
    curriculum: list[tuple[int, int]] | None = Field(
        None,
        description="[[step, segments_per_sample], ...] from step 0, steps increasing: from each step on, samples are that "
        "many segments long (carry: the truncated-backprop window); sets segments_per_sample to the last entry",
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_bytes: int | None = Field(None, ge=1, description="stop after this many original bytes of training targets")
    max_minutes: float | None = Field(None, gt=0, description="stop after this much wall-clock training time")
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    decay: Literal["cosine", "constant"] = "cosine"
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="adamw; or muon: Muon (orthogonalised momentum) for the hidden weight matrices and AdamW for the "
        "embedding, norms, biases and initial states, at the same lr and schedule",
    )
    weight_decay: float = Field(0.1, ge=0, description="decoupled decay on weight matrices (never norms, biases, initial states)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (null: no clipping)")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    activation_checkpointing: bool = Field(
        False,
        description="recompute each segment's layers in backward: activation memory of one segment, not the whole sample, "
        "for about a third more compute (same results)",
    )
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0: only at the end)")
    eval_tokens: int = Field(65536, ge=2, description="validation tokens evaluated (from the start of val)")
    eval_bytes: int | None = Field(
        None, ge=1, description="evaluate the val tokens covering this many bytes instead (same text for every codec)"
    )
    eval_batch: int = Field(8, ge=1, description="contiguous validation streams evaluated side by side")
    checkpoint_every: int = Field(0, ge=0, description="save every N steps (0: only at the end)")
    keep_last: int = Field(3, ge=0, description="checkpoints kept (0: all)")
    on_nonfinite_loss: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient: stop (error, no checkpoint of that step) or skip the optimizer step"
    )
    max_skips: int = Field(10, ge=0, description="with on_nonfinite_loss: skip, stop once more steps than this were skipped")

    @field_validator("curriculum")
    @classmethod
    def _check_curriculum(cls, entries: list[tuple[int, int]] | None) -> list[tuple[int, int]] | None:
        if entries is None:
            return None
        if not entries:
            raise ValueError("is empty; give [[0, segments], [step, segments], ...] or leave it out")
        if entries[0][0] != 0:
            raise ValueError(f"the first entry must start at step 0 (got {list(entries[0])})")
        for (a, _), (b, _) in zip(entries, entries[1:]):
            if b <= a:
                raise ValueError(f"steps must be strictly increasing ({a} then {b})")
        for step, n in entries:
            if n < 1:
                raise ValueError(f"segments_per_sample must be at least 1 (got {n} at step {step})")
        return entries

    @model_validator(mode="after")
    def _check(self) -> "TrainSection":
        if self.max_steps is None and self.max_bytes is None and self.max_minutes is None:
            raise ValueError("give a stop rule: train.max_steps, train.max_bytes or train.max_minutes")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) is larger than train.lr ({self.lr})")
        if self.curriculum is not None:
            last = self.curriculum[-1][1]
            if "segments_per_sample" in self.model_fields_set and self.segments_per_sample != last:
                raise ValueError(
                    f"train.segments_per_sample ({self.segments_per_sample}) differs from the last train.curriculum entry "
                    f"({last} segments); leave train.segments_per_sample out (the curriculum sets it) or set it to {last}"
                )
            self.segments_per_sample = last  # the length the run ends with, in the resolved recipe
        return self

    def length_schedule(self) -> list[tuple[int, int]]:
        """(first step, segments per sample) pairs: the curriculum, or [(0, segments_per_sample)]."""
        return [tuple(e) for e in self.curriculum] if self.curriculum is not None else [(0, self.segments_per_sample)]

    def sample_lengths(self, segment_len: int):
        """Tokens per sample by step, as a `LengthSchedule` (segments per sample x `segment_len`)."""
        from om.train.batches import LengthSchedule

        return LengthSchedule([(step, n * segment_len) for step, n in self.length_schedule()])


class OutSection(BaseModel):
    """Where the run folder goes and what is printed at the end."""

    model_config = _STRICT

    dir: str = Field("runs/{recipe}", description="run folder; {recipe} is the recipe file's name without .yaml")
    sample_bytes: int = Field(0, ge=0, description="bytes to sample after training (0: no sample)")
    sample_prompt: str = ""
    sample_temperature: float = Field(0.8, ge=0)
    progress: bool = Field(True, description="show progress on stderr: a bar on a terminal, a line every train.log_every steps otherwise")
    log_sinks: list[Literal["jsonl", "csv", "tensorboard"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where metrics go: jsonl (metrics.jsonl), csv (train.csv, eval.csv), tensorboard (tensorboard/ event files)",
    )

    @model_validator(mode="after")
    def _unique_sinks(self) -> "OutSection":
        repeated = sorted({s for s in self.log_sinks if self.log_sinks.count(s) > 1})
        if repeated:
            raise ValueError(f"out.log_sinks: {repeated[0]!r} is listed twice")
        return self


class DistributedSection(BaseModel):
    """How a run launched by torchrun with several processes talks between them (ignored in one
    process). The global batch never depends on the process count: see `train.grad_accum`."""

    model_config = _STRICT

    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl when training on CUDA, gloo on CPU")
    timeout_minutes: float = Field(
        10.0,
        gt=0,
        description="a rank waiting this long for the others fails the run (must exceed rank 0's evaluations, checkpoints "
        "and data preparation)",
    )


class Recipe(BaseModel):
    """A whole training recipe. `model` is an `OmConfig`; its vocab_size defaults to the codec's."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: OmConfig = Field(default_factory=OmConfig)
    data: DataSection
    train: TrainSection
    out: OutSection = Field(default_factory=OutSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    def to_dict(self) -> dict:
        """The recipe as plain JSON-ready data; with `data.dataset`, without the preparation options
        (which apply only to `data.sources`), so the result is itself a valid recipe."""
        d = self.model_dump(mode="json")
        if self.data.dataset is not None:
            for key in PREPARE_OPTIONS:
                d["data"].pop(key, None)
        return d

    def to_yaml(self) -> str:
        """`to_dict` as YAML, in the schema's key order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def hash(self) -> str:
        """The sha256 of `to_dict` (see `recipe_hash`)."""
        return recipe_hash(self.to_dict())


def recipe_hash(d: dict) -> str:
    """The sha256 hex digest of a recipe dict, independent of key order."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# Loading -------------------------------------------------------------------------------------------
def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class at key path `loc` of a recipe (None if it is not a model)."""
    cls: Any = Recipe
    for key in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or key not in cls.model_fields:
            return None
        cls = cls.model_fields[key].annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return "allowed: " + ", ".join(options)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _show(value: Any) -> str:
    text = _REPR.repr(value)  # bounded work even for a huge value
    return text if len(text) <= 60 else text[:57] + "..."


def _where(source: str, path: str, overrides: dict[str, str] | None) -> str:
    """Where the value at key `path` was set: the --set option that set it (or a key above or below
    it), else the recipe file `source`."""
    for key, expr in (overrides or {}).items():
        if path == key or path.startswith(key + ".") or key.startswith(path + ".") and path:
            return f"--set {expr}"
    return source


# Library arguments that recipe keys feed. A library error about one of them (an `OmUserError` keyed
# by the argument's name) is renamed to the key, see `recipe_keys`.
RECIPE_KEYS = {
    "codec": "data.codec",
    "vocab_size": "data.vocab_size",
    "include": "data.include",
    "exclude": "data.exclude",
    "val_fraction": "data.val_fraction",
    "errors": "data.errors",
    "max_bytes": "out.sample_bytes",
    "temperature": "out.sample_temperature",
}


def recipe_keys(source: str, overrides: dict[str, str] | None = None):
    """A context in which library calls made with a recipe's values fail naming the recipe key and
    where it was set: `my.yaml: data.vocab_size: 100 is too small ...` (see `om.errors.renamed_keys`)."""
    return renamed_keys(RECIPE_KEYS, where=lambda key: _where(source, key, overrides))


def _check_library_values(recipe: Recipe) -> None:
    """Values only the library can judge, judged when the recipe is loaded rather than when they are
    used: the codec options of data.sources, the sampling options of out.sample_*."""
    if recipe.data.sources is not None:
        from om.data.codecs import check_codec_options

        check_codec_options(recipe.data.codec, recipe.data.vocab_size)
    if recipe.out.sample_bytes:
        from om.sampling import SamplingOptions

        SamplingOptions(max_bytes=recipe.out.sample_bytes, temperature=recipe.out.sample_temperature).validate()


def format_validation_error(source: str, err: ValidationError, overrides: dict[str, str] | None = None) -> str:
    """One line naming the file (or the --set option), the key path, the problem and the value."""
    problems = err.errors(include_url=False)
    first = problems[0]
    loc = tuple(str(x) for x in first["loc"])
    path = ".".join(loc)
    where = _where(source, path, overrides)
    if first["type"] == "extra_forbidden":
        parent = _section_model(tuple(first["loc"])[:-1])
        options = list(parent.model_fields) if parent else []
        msg = f"{where}: {path}: unknown key; {_did_you_mean(loc[-1], options)}"
    elif first["type"] == "missing":
        msg = f"{where}: {path}: required key is missing"
    elif first["type"] in ("value_error", "assertion_error") or not loc:
        text = first["msg"].removeprefix("Value error, ")
        # A section's own check names the keys it is about: credit the one a --set gave, if any.
        named = [k for k in re.findall(r"\b[a-z_]+\.[a-z_]+\b", text) if path and k.startswith(path + ".")]
        if named:
            where = next((w for w in (_where(source, k, overrides) for k in named) if w != source), source)
        msg = f"{where}: {path + ': ' if path else ''}{text}"
    else:
        msg = f"{where}: {path}: {first['msg']} (got {_show(first.get('input'))})"
    if len(problems) > 1:
        msg += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return msg


def parse_override(expr: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    key, sep, value = expr.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise OmUserError(f"--set {expr}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
    try:
        parsed = _load_yaml(value, f"--set {expr}") if value.strip() else None
    except yaml.YAMLError as err:
        raise OmUserError(f"--set {expr}: value is not valid YAML ({' '.join(str(err).split())})") from None
    return key.split("."), parsed


_DATA_CHOICE = {"dataset": "sources", "sources": "dataset"}


def apply_overrides(raw: dict, overrides: list[str]) -> dict[str, str]:
    """Apply `--set` expressions to the raw recipe dict in place; return {key path: expression}.

    Each key must exist in the schema (same "did you mean" hint as in the file). Setting
    `data.dataset` replaces the file's `data.sources` together with the options of their preparation
    (`PREPARE_OPTIONS`) that no `--set` gave; setting `data.sources` replaces `data.dataset`.
    """
    applied: dict[str, str] = {}
    for expr in overrides:
        keys, value = parse_override(expr)
        cls: Any = Recipe
        node = raw
        for depth, key in enumerate(keys):
            is_model = isinstance(cls, type) and issubclass(cls, BaseModel)
            if is_model and key not in cls.model_fields:
                where = ".".join(keys[: depth + 1])
                raise OmUserError(f"--set {expr}: {where}: unknown key; {_did_you_mean(key, list(cls.model_fields))}")
            if not is_model:
                raise OmUserError(f"--set {expr}: {'.'.join(keys[:depth])} has no sub-keys")
            cls = cls.model_fields[key].annotation
            if depth == len(keys) - 1:
                node[key] = value
                # data.dataset and data.sources exclude each other: setting one replaces the other.
                if keys[:-1] == ["data"] and key in _DATA_CHOICE and value is not None:
                    node.pop(_DATA_CHOICE[key], None)
                    if key == "dataset":
                        for option in PREPARE_OPTIONS:
                            if f"data.{option}" not in applied:
                                node.pop(option, None)
            else:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = {}
                    node[key] = child
                node = child
        applied[".".join(keys)] = expr
    return applied


def read_yaml(path: str | Path) -> dict:
    """Read a recipe file into a raw dict (bounded in size; OmUserError naming the file)."""
    p = Path(path)
    if not p.exists():
        raise OmUserError(f"{p}: no such recipe file")
    if p.is_dir():
        raise OmUserError(f"{p}: is a folder, expected a recipe .yaml file")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # bounded: the path may be /dev/zero or a huge file
        if len(data) > MAX_RECIPE_BYTES:
            raise OmUserError(f"{p}: larger than {MAX_RECIPE_BYTES:,} bytes; not a recipe")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OmUserError(f"{p}: not a text file") from None
    return parse_yaml(text, str(p))


# A recipe holds a few hundred values; YAML aliases can make a small file stand for billions.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000
MAX_RECIPE_DEPTH = 100


def _count_values(value: Any, source: str) -> int:
    """Values in `value` with aliases expanded; OmUserError if over the limit or self-referring."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def count(v: Any) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        key = id(v)
        if key in open_ids:
            raise OmUserError(f"{source}: a YAML alias refers to the structure that contains it")
        if key not in sizes:
            open_ids.add(key)
            n = 1 + sum(count(x) for x in (v.values() if isinstance(v, dict) else v))
            open_ids.discard(key)
            if n > MAX_RECIPE_VALUES:
                raise OmUserError(f"{source}: more than {MAX_RECIPE_VALUES:,} values once YAML aliases are expanded")
            sizes[key] = n
        return sizes[key]

    return count(value)


def _bracket_depth(text: str) -> int:
    """The deepest nesting of [ and { (quotes ignored: an over-estimate is harmless here)."""
    depth = deepest = 0
    for ch in re.findall(r"[\[\]{}]", text):
        depth = depth + 1 if ch in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest


def _load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, refusing nesting too deep for the parser and alias bombs (OmUserError)."""
    if _bracket_depth(text) > MAX_RECIPE_DEPTH:  # PyYAML takes seconds to reach its recursion limit
        raise OmUserError(f"{source}: nested too deeply")
    try:
        value = yaml.safe_load(text)
        _count_values(value, source)
    except RecursionError:
        raise OmUserError(f"{source}: nested too deeply") from None
    return value


def parse_yaml(text: str, source: str) -> dict:
    """Recipe text -> raw dict; `source` names it in errors."""
    try:
        raw = _load_yaml(text, source)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise OmUserError(f"{source}: {at}invalid YAML ({' '.join(str(problem).split())})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OmUserError(f"{source}: a recipe must be a mapping with sections model, data, train, out")
    return raw


def validate_recipe(raw: dict, source: str = "recipe", overrides: dict[str, str] | None = None) -> Recipe:
    """A raw recipe dict as a `Recipe`: the schema first, then the values the library judges; an error
    names `source` (or the --set option in `overrides`), the key and the value."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise OmUserError(format_validation_error(source, err, overrides)) from None
    _check_data_choice(recipe, source, overrides)
    with recipe_keys(source, overrides):
        _check_library_values(recipe)
    return recipe


def _check_data_choice(recipe: Recipe, source: str, overrides: dict[str, str] | None) -> None:
    """Refuse a preparation option given next to `data.dataset`, where it would be ignored."""
    data = recipe.data
    if data.dataset is None:
        return
    given = [key for key in PREPARE_OPTIONS if key in data.model_fields_set]
    if given:
        key = f"data.{given[0]}"
        kept = "the codec it was prepared with" if given[0] in ("codec", "vocab_size") else "the options it was prepared with"
        raise OmUserError(
            f"{_where(source, key, overrides)}: {key} applies only to data.sources, but data.dataset is set: a prepared "
            f"dataset keeps {kept}; leave {key} out, or give data.sources instead of data.dataset"
        )


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file (None: the built-in quickstart recipe)."""
    if path is None:
        from om.train.quickstart import QUICKSTART_NAME, QUICKSTART_YAML

        raw, source, stem = parse_yaml(QUICKSTART_YAML, QUICKSTART_NAME), QUICKSTART_NAME, "quickstart"
    else:
        raw, source, stem = read_yaml(path), str(path), Path(path).stem
    applied = apply_overrides(raw, list(overrides))
    recipe = validate_recipe(raw, source, applied)
    recipe.out.dir = recipe.out.dir.replace("{recipe}", stem)
    return recipe


# Path placeholders --------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def stdlib_dir() -> str:
    """The running interpreter's standard-library folder (what `{stdlib}` stands for)."""
    return sysconfig.get_paths()["stdlib"]


def expand_path(text: str, where: str) -> str:
    """Expand {stdlib}, ${NAME} / ${NAME:-default} and ~ in a recipe path."""

    def env(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name) or default
        if value is None:
            raise OmUserError(f"{where}: environment variable {name} is not set (in {text!r})")
        return value

    out = _ENV.sub(env, text).replace("{stdlib}", stdlib_dir())
    return os.path.expanduser(out)
