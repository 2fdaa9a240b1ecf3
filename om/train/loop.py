"""The training loop: deterministic batches, AdamW + schedule, logging, eval, checkpoints, resume."""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import om
from om.checkpoint import load_extra_tensors, load_optimizer_state, load_weights
from om.device import resolve_device
from om.errors import OmRunError, OmUserError, renamed_keys
from om.model import OmLLM
from om.model.config import OmConfig
from om.model.loss import next_token_loss
from om.model.sizing import check_fits, training_estimate
from om.model.state import OmState
from om.train.batches import BatchSampler, byte_count
from om.train.distributed import Distributed
from om.train.model_card import CARD_FILE, model_card
from om.train.optim import make_optimizer
from om.train.precision import autocast
from om.train.progress import ProgressDisplay
from om.train.recipe import Recipe
from om.train.recipe_data import resolve_dataset
from om.train.run_folder import ResumeDecision, RunFolder, stop_reached
from om.train.schedule import budget_progress, learning_rate
from om.train.signals import StopSignals
from om.train.sinks import Sinks, check_sinks
from om.train.validation import slice_tokens, validate


@dataclass
class TrainResult:
    """What a run ended with: its folder, the last checkpoint, the step reached, the signal that
    stopped it (None when it finished), the last validation numbers and the training speed."""

    run_dir: Path
    checkpoint: Path | None
    step: int
    interrupted: int | None = None
    exit_code: int = 0
    val: dict | None = None
    bytes_per_s: float = 0.0
    resumed_from: Path | None = None
    sample: str | None = None
    notes: list[str] = field(default_factory=list)
    skipped: int = 0  # steps whose NaN/inf loss was skipped (train.on_nonfinite_loss: skip), across resumes
    trained_steps: int = 0  # steps this call trained (0: nothing was left to train)
    complete: str | None = None  # the stop rule that ended the run ("train.max_steps 20"); None if stopped early
    already_complete: bool = False  # the run folder's checkpoint had already reached the stop rule: nothing was trained


@dataclass
class _Progress:
    """Counters saved in trainer.json so a resumed run continues them exactly."""

    step: int = 0
    tokens: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0  # wall-clock of the run so far, across resumes
    train_s: float = 0.0  # time spent in training steps only
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    window: dict = field(default_factory=lambda: {"nats": 0.0, "tokens": 0, "bytes": 0, "steps": 0, "train_s": 0.0})


def _rng_state() -> dict:
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(rng: dict) -> None:
    import numpy as np

    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(rng["torch"]), dtype=np.uint8).copy()))
    if "cuda" in rng and torch.cuda.is_available():
        states = [torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy()) for s in rng["cuda"]]
        torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])


def already_complete_message(run_dir: Path, checkpoint: Path, step: int, rule: str) -> str:
    """What `om train` says (on stderr) when the checkpoint it would continue already reached the
    stop rule `rule` ("train.max_steps 20"): nothing is trained."""
    key, value = rule.split(" ", 1)
    more = float(value) * 2
    hint = f"--set {key}={int(more) if more.is_integer() else more:g}"
    return (
        f"{run_dir}: already complete at step {step} ({rule} reached by {checkpoint}); nothing was trained; "
        f"raise the stop rule to train further (e.g. {hint}), or use --out DIR for a new run"
    )


class Trainer:
    """Runs one recipe in one run folder.

    `Trainer(recipe, run_dir, resume="auto"|"never"|PATH, source=recipe file name for messages,
    progress=None (the recipe's out.progress), console=a rich Console for messages and the bar
    (None: silent))`; `.run(stop_at_step=None, on_log=None) -> TrainResult`. `stop_at_step`
    behaves like a signal arriving during that step (a checkpoint is saved and the run stops);
    tests use it. `on_log` receives every train record written to metrics.jsonl.

    `resume="auto"` continues the run folder's checkpoint only if it was trained with the same
    recipe, keys that may change between a run and its continuation aside (see
    `om.train.run_folder.CONTINUATION_KEYS`); a run whose checkpoint already reached the stop rule
    trains nothing, says so and returns that checkpoint (`TrainResult.already_complete`).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        resume: str = "auto",
        source: str = "recipe",
        progress: bool | None = None,
        console=None,
    ):
        self.recipe, self.source = recipe, source
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.resume = resume
        self.show_progress = recipe.out.progress if progress is None else progress
        # Messages and the progress bar share one rich console (stderr), so they do not garble it.
        self.console = console
        if console is not None:
            self.log = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.log = lambda text: None
        self.notes: list[str] = []
        self.last_checkpoint: Path | None = None  # the newest checkpoint written or resumed from

    # Setup -----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        r = self.recipe
        t = r.train
        check_sinks(r.out.log_sinks, self.source)  # before anything is prepared or written
        if t.threads:
            torch.set_num_threads(t.threads)
        # Under torchrun: join the process group; only rank 0 prints, logs and writes files.
        with renamed_keys({"device": "train.device"}, where=self.source):
            device = resolve_device(t.device)
        self.dist = Distributed.setup(r.distributed, device)
        self.device = self.dist.device
        # Tokens per sample by step (train.curriculum; one length without it).
        self.lengths = t.sample_lengths(r.model.segment_tokens)
        # Refuse a model that cannot fit before preparing data or allocating anything (the longest samples).
        estimate = training_estimate(r.model, t.micro_batch_size, self.lengths.longest, t.activation_checkpointing)
        check_fits(estimate, self.device, self.source)
        if not self.dist.is_main:
            self.show_progress, self.log = False, (lambda text: None)
        with self.dist.local_first():  # one rank per machine prepares data.sources into the cache
            self.dataset, self.data_info = resolve_dataset(r.data, self.source, progress=self.show_progress)
        if self.data_info.get("prepared"):
            self.log(f"prepared {', '.join(self.data_info['sources'])} into {self.data_info['dataset']}")
        codec = self.codec = self.dataset.codec
        if "vocab_size" in r.model.model_fields_set and r.model.vocab_size != codec.vocab_size:
            raise OmUserError(
                f"{self.source}: model.vocab_size: {r.model.vocab_size} does not match the {codec.name} codec of "
                f"{self.dataset.path} ({codec.vocab_size} ids); leave it out to take it from the data"
            )
        self.config = r.model.model_copy(update={"vocab_size": codec.vocab_size})
        self.config = OmConfig.model_validate(self.config.model_dump())
        r.model = self.config  # the resolved recipe records the vocabulary actually used
        self.sampler = BatchSampler(self.dataset.split("train"), self.lengths, t.micro_batch_size, t.grad_accum, t.seed, t.state)
        self.micros = self.dist.micro_indices(t.grad_accum)  # this rank's micro batches of every step
        self.decision = self.folder.decide_resume(
            self.resume, self.config, r, self.dataset.fingerprint, self.source, clean=self.dist.is_main
        )
        self.resume_from = self.decision.checkpoint
        self.notes.extend(self.decision.notes)

        torch.manual_seed(t.seed)
        self.model = OmLLM(self.config).to(self.device)
        self.optimizer = make_optimizer(self.model, t.lr, t.weight_decay, tuple(t.betas), t.eps, t.optimizer)
        self.p = _Progress()
        self.last_val: tuple[int, dict] | None = None  # (step, eval result) of the latest evaluation
        self.carried: list[OmState | None] = [None] * t.grad_accum
        if self.resume_from is not None:
            self._load_resume(self.decision)
        self.dist.fork_rng(t.seed, self.p.step)
        # The same math either way (only what backward keeps differs), so it may change on resume.
        self.model.activation_checkpointing = t.activation_checkpointing
        model = self.dist.wrap(self.model, self.lengths.shortest)
        self.step_model = torch.compile(model) if t.compile else model
        if t.compile and self.device.type == "cpu":
            self.notes.append(
                "train.compile on CPU: inductor's training step measured no faster than eager (1.01x on 2 cores, "
                "after a compilation of several seconds; BENCHMARKS.md \"torch.compile on CPU\"); train.compile: false "
                "starts sooner at the same speed"
            )

        self.dist.barrier()  # every rank has read the run folder (resume) before rank 0 writes to it
        self.sinks = None
        if self.dist.is_main:
            self.folder.write_recipe(r.to_yaml(), self.source)
            # Each sink starts empty, or drops what a run that went on past the checkpoint logged.
            self.sinks = Sinks(r.out.log_sinks, self.folder, None if self.resume_from is None else self.p.step)

    def _load_resume(self, decision: ResumeDecision) -> None:
        folder, trainer = decision.checkpoint, decision.trainer
        load_weights(self.model, folder / "model.safetensors", self.device)
        load_optimizer_state(folder, self.optimizer)
        self.p = _Progress(
            step=trainer["step"],
            tokens=trainer["tokens_seen"],
            bytes=trainer["bytes_seen"],
            elapsed_s=trainer["elapsed_s"],
            train_s=trainer["train_s"],
            skipped=trainer.get("skipped_steps", 0),
            window=trainer["log_window"],
        )
        _set_rng_state(trainer["rng"])
        last = trainer.get("last_eval")
        if last:
            self.last_val = (last.pop("step"), last)
        if self.recipe.train.state == "carry":
            tensors = load_extra_tensors(folder) or {}
            for m in self.micros:  # the carried state of this rank's micro batches
                part = {k.split(".", 2)[2]: v.to(self.device) for k, v in tensors.items() if k.startswith(f"carry.{m}.")}
                if not part:
                    raise OmUserError(f"{folder}/state.safetensors: no carried state for micro batch {m}")
                self.carried[m] = OmState.from_dict(part)

    # Pieces -----------------------------------------------------------------------------------------
    def _progress_fraction(self, elapsed: float, warmup: bool = True) -> float:
        t = self.recipe.train
        warmup_steps = t.warmup_steps if warmup else 0
        return budget_progress(self.p.step, self.p.bytes, elapsed, t.max_steps, t.max_bytes, t.max_minutes, warmup_steps)

    def _elapsed(self, start_wall: float) -> float:
        """Wall-clock of the run so far. With a max_minutes budget it drives the learning rate and
        the stop, so several processes use the largest of their clocks and stay in step."""
        elapsed = time.perf_counter() - start_wall
        return self.dist.max(elapsed) if self.recipe.train.max_minutes is not None else elapsed

    def _write(self, record: dict) -> None:
        """Give a record to the recipe's log sinks (rank 0 only)."""
        if self.sinks is not None:
            self.sinks.write(record)

    def _train_step(self, lr: float) -> dict:
        t = self.recipe.train
        model, opt = self.step_model, self.optimizer
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr
        nats, tokens, nbytes = 0.0, 0, 0
        for i, micro in enumerate(self.micros):
            batch = self.sampler.batch(self.p.step, micro)
            x, y = batch.inputs.to(self.device), batch.targets.to(self.device)
            state = None
            if t.state == "carry" and self.carried[micro] is not None and not batch.reset.all():
                state = self.carried[micro].restart_rows(batch.reset, self.model.init_state(x.shape[0]))
            # Several processes: gradients are all-reduced (averaged) on the last micro batch only.
            with self.dist.sync_grads(last=i == len(self.micros) - 1):
                with autocast(self.device, t.precision):
                    # Call the (possibly compiled) module itself; `model.loss` would bypass torch.compile.
                    logits, new_state = model(x, state)
                    loss = next_token_loss(logits, y)
                (loss / len(self.micros)).backward()
            if t.state == "carry":
                self.carried[micro] = new_state.detach()
            n = y.numel()
            nats += float(loss.detach()) * n
            tokens += n
            nbytes += byte_count(self.codec, batch.targets)
        nats, tokens, nbytes = self.dist.sum(nats, tokens, nbytes)  # the global batch's totals
        tokens, nbytes = int(tokens), int(nbytes)
        # max_norm=inf only measures the norm (the gradients are multiplied by exactly 1).
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or float("inf")))
        grad_norm = norm if t.grad_clip is not None else None
        # A NaN/inf loss or gradient would poison the weights and the optimizer state: never step on
        # it. Both numbers are totals over every process, so all ranks take the same decision.
        nonfinite = None
        if not math.isfinite(nats):
            nonfinite = f"training loss became {nats / max(1, tokens):g}"
        elif not math.isfinite(norm):
            nonfinite = f"gradient norm became {norm:g}"
        if nonfinite is None:
            opt.step()
        elif t.state == "carry":
            self.carried = [None] * len(self.carried)  # the rows restart from the initial state
        opt.zero_grad(set_to_none=True)
        return {"nats": nats, "tokens": tokens, "bytes": nbytes, "grad_norm": grad_norm, "nonfinite": nonfinite}

    def _nonfinite(self, what: str) -> None:
        """Step `self.p.step` had a NaN/inf loss or gradient and was not applied: stop with an error
        (train.on_nonfinite_loss: stop, or past train.max_skips), or count it as skipped."""
        t = self.recipe.train
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was saved"
        # --resume auto refuses a changed lr: continuing the checkpoint with a lower one needs --resume CKPT.
        lower = f"lower train.lr and continue with --resume {self.last_checkpoint}" if self.last_checkpoint else "lower train.lr"
        if t.on_nonfinite_loss == "stop":
            raise OmRunError(
                f"{self.source}: step {self.p.step}: the {what}; training stopped ({kept}); "
                f"{lower}, or set train.on_nonfinite_loss: skip"
            )
        self.p.skipped += 1
        self._write({"event": "skip", "step": self.p.step, "reason": what, "skipped": self.p.skipped})
        if self.p.skipped > t.max_skips:
            raise OmRunError(
                f"{self.source}: step {self.p.step}: the {what}; {self.p.skipped} steps skipped, more than "
                f"train.max_skips ({t.max_skips}); training stopped ({kept}); {lower}"
            )
        self.log(f"step {self.p.step}: the {what}; step skipped ({self.p.skipped} so far)")

    def _trainer_meta(self) -> dict:
        t = self.recipe.train
        data_position = {"mode": t.state, "next_step": self.p.step, "next_seq_len": self.lengths.at(self.p.step)}
        if t.state == "carry":
            data_position["stream_positions"] = [
                int(s) for m in range(t.grad_accum) for s in self.sampler.positions(self.p.step, m)[0]
            ]
        return {
            "step": self.p.step,
            "tokens_seen": self.p.tokens,
            "bytes_seen": self.p.bytes,
            "elapsed_s": self.p.elapsed_s,
            "train_s": self.p.train_s,
            "skipped_steps": self.p.skipped,
            "log_window": dict(self.p.window),
            "last_eval": {"step": self.last_val[0], **self.last_val[1]} if self.last_val else None,
            "rng": _rng_state(),
            "seed": t.seed,
            "state_mode": t.state,
            "carried_state": "state.safetensors" if t.state == "carry" else None,
            "data_position": data_position,
            "recipe_hash": self.recipe.hash(),
            "recipe": self.recipe.to_dict(),
            "om_version": om.__version__,
            "torch_version": torch.__version__,
            "world_size": self.dist.world,  # for information: any process count dividing grad_accum resumes it
        }

    def _card(self, stop: str | None) -> str:
        """The README.md model card of the final checkpoint at this step."""
        from om.model.sizing import parameter_count

        ds = self.dataset
        dataset = {"path": str(ds.path), "fingerprint": ds.fingerprint}
        for split in ("train", "val"):
            dataset[f"{split}_tokens"], dataset[f"{split}_bytes"] = ds.num_tokens(split), ds.num_bytes(split)
        return model_card(
            self.folder.checkpoint_path(self.p.step),
            self.recipe.to_dict(),
            self._trainer_meta(),
            parameter_count(self.config),
            {"name": self.codec.name, "vocab_size": self.codec.vocab_size},
            dataset,
            stop,
        )

    def _save(self, final: str | None = None) -> Path:
        """Write a checkpoint (rank 0; every rank must call this, since rank 0 collects the carried
        state of every rank's micro batches) and return its path. `final`: the stop rule that ended
        the run; the checkpoint then gets the README.md model card."""
        t = self.recipe.train
        tensors = None
        if t.state == "carry":
            tensors = {}
            for m, state in enumerate(self.carried):
                if state is not None:
                    tensors.update({f"carry.{m}.{k}": v for k, v in state.to_dict().items()})
            tensors = self.dist.gather_tensors(tensors)
        if not self.dist.is_main:
            return self.folder.checkpoint_path(self.p.step)
        try:
            path = self.folder.save_checkpoint(
                self.p.step,
                self.model,
                self.config,
                self.codec,
                self._trainer_meta(),
                optimizer=self.optimizer,
                dataset={"path": str(self.dataset.path), "fingerprint": self.dataset.fingerprint},
                tensors=tensors,
                extra_files={CARD_FILE: self._card(final)} if final else None,
            )
        except OmRunError as err:  # e.g. a full disk: say what is still there to resume from
            kept = f"the previous checkpoint {self.last_checkpoint} is intact" if self.last_checkpoint else "no earlier checkpoint"
            raise OmRunError(f"{err}; {kept}") from None
        self.last_checkpoint = path
        self.folder.prune(t.keep_last, protect=path)
        if self.sinks is not None:
            self.sinks.flush()  # what the checkpoint has seen is on disk in every sink
        return path

    def _eval(self) -> dict | None:
        """Evaluate and log (rank 0; other ranks return None and wait for it in the next step)."""
        if not self.dist.is_main:
            return None
        t = self.recipe.train
        val_split = self.dataset.split("val")
        val = validate(self.model, self.codec, val_split, slice_tokens(t, self.codec, val_split), t.eval_batch)
        record = {"event": "eval", "step": self.p.step, "bytes": self.p.bytes, **val, "elapsed_s": round(self.p.elapsed_s, 3)}
        self._write(record)
        sl = val["val_slice"]
        self.log(
            f"step {self.p.step}: val bits/byte {val['val_bpb']:.4f} (val loss {val['val_loss']:.4f} nats/token; "
            f"first {sl['tokens']} val tokens as {sl['streams']} streams: om eval CKPT --val-tokens {sl['tokens']} "
            f"--val-streams {sl['streams']})"
        )
        return val

    def _log_window(self, lr: float, grad_norm: float | None) -> dict:
        w = self.p.window
        record = {
            "event": "train",
            "step": self.p.step,
            "tokens": self.p.tokens,
            "bytes": self.p.bytes,
            "loss": w["nats"] / max(1, w["tokens"]),
            "bpb": w["nats"] / math.log(2) / max(1, w["bytes"]),
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": self.p.skipped,
            "bytes_per_s": round(w["bytes"] / w["train_s"], 1) if w["train_s"] > 0 else None,
            "elapsed_s": round(self.p.elapsed_s, 3),
        }
        self._write(record)
        self.p.window = {"nats": 0.0, "tokens": 0, "bytes": 0, "steps": 0, "train_s": 0.0}
        return record

    # The loop ---------------------------------------------------------------------------------------
    def run(self, stop_at_step: int | None = None, on_log: Callable[[dict], None] | None = None) -> TrainResult:
        """Train until the recipe's stop rule, a signal or `stop_at_step`; see the class docstring."""
        self._setup()
        try:
            return self._run(stop_at_step, on_log)
        finally:
            if self.sinks is not None:
                self.sinks.close()

    def _run(self, stop_at_step: int | None, on_log: Callable[[dict], None] | None) -> TrainResult:
        t = self.recipe.train
        result = TrainResult(self.run_dir, None, self.p.step, resumed_from=self.resume_from, notes=self.notes)
        if self.resume_from is not None:
            self.log(f"resuming from {self.resume_from} at step {self.p.step}")
        for note in self.notes:
            self.log("note: " + note)
        first_step = self.p.step
        last_saved = self.resume_from if self.resume_from is not None else None
        self.last_checkpoint = last_saved
        saved_step = self.p.step if self.resume_from is not None else None
        evaluated_step, result.val = self.last_val if self.last_val else (None, None)
        self.last_lr, self.last_grad_norm = t.lr, None

        def log_window(lr, grad_norm) -> None:
            record = self._log_window(lr, grad_norm)
            display.record(record, self._progress_fraction(self.p.elapsed_s, warmup=False))
            if on_log:
                on_log(record)

        display = ProgressDisplay(
            self.show_progress, self.console, t.max_steps, self._progress_fraction(self.p.elapsed_s, warmup=False)
        )
        start_wall = time.perf_counter() - self.p.elapsed_s
        # Under torchrun a Ctrl-C reaches each rank twice (from the terminal and from torchrun): not an abort.
        with StopSignals(abort_on_repeat=not self.dist.active) as signals, display:
            finished = self._finished(self._elapsed(start_wall))  # the stop rule reached (None: not yet)
            while finished is None:
                elapsed = self._elapsed(start_wall)
                lr = learning_rate(self.p.step, self._progress_fraction(elapsed), t.lr, t.min_lr, t.warmup_steps, t.decay)
                t0 = time.perf_counter()
                out = self._train_step(lr)
                self.last_lr, self.last_grad_norm = lr, out["grad_norm"]
                dt = time.perf_counter() - t0
                self.p.step += 1
                self.p.tokens += out["tokens"]
                self.p.bytes += out["bytes"]
                self.p.train_s += dt
                w = self.p.window
                if out["nonfinite"] is None:
                    w["nats"] += out["nats"]
                    w["tokens"] += out["tokens"]
                    w["bytes"] += out["bytes"]
                w["steps"] += 1
                w["train_s"] += dt
                self.p.elapsed_s = time.perf_counter() - start_wall
                if out["nonfinite"] is not None:
                    self._nonfinite(out["nonfinite"])
                if self.p.step % t.log_every == 0:
                    log_window(lr, out["grad_norm"])
                display.update(self.p, self._progress_fraction(self.p.elapsed_s, warmup=False), out, lr)
                if t.eval_every and self.p.step % t.eval_every == 0:
                    result.val = self._eval()
                    evaluated_step = self.p.step
                    self.last_val = (evaluated_step, result.val)
                # Decided once per step, the same on every rank: the last step goes to the final save below.
                finished = self._finished(self._elapsed(start_wall))
                if finished is not None:
                    break
                signals.received = self.dist.agree_signal(signals.received)  # all ranks stop after the same step
                stop_now = signals.received is not None or (stop_at_step is not None and self.p.step >= stop_at_step)
                if stop_now or (t.checkpoint_every and self.p.step % t.checkpoint_every == 0):
                    self.p.elapsed_s = time.perf_counter() - start_wall
                    last_saved, saved_step = self._save(), self.p.step
                if stop_now:
                    result.interrupted = signals.received
                    result.exit_code = signals.exit_code if signals.received is not None else 0
                    break
            if finished is not None:
                if self.p.window["steps"]:
                    log_window(self.last_lr, self.last_grad_norm)
                if evaluated_step != self.p.step:
                    result.val = self._eval()
                    self.last_val = (self.p.step, result.val)
                if saved_step != self.p.step or last_saved is None:
                    self.p.elapsed_s = time.perf_counter() - start_wall
                    last_saved = self._save(final=finished)
        result.checkpoint = last_saved
        result.step = self.p.step
        result.skipped = self.p.skipped
        result.trained_steps = self.p.step - first_step
        result.complete = finished
        result.already_complete = finished is not None and result.trained_steps == 0 and self.resume_from is not None
        if result.already_complete:
            self.log(already_complete_message(self.run_dir, self.resume_from, self.p.step, finished))
        result.bytes_per_s = self.p.bytes / self.p.train_s if self.p.train_s > 0 else 0.0
        self.dist.close()
        return result

    def _finished(self, elapsed: float) -> str | None:
        """The stop rule the run has reached at wall-clock `elapsed`, or None."""
        return stop_reached(self.p.step, self.p.bytes, elapsed, self.recipe.train)
