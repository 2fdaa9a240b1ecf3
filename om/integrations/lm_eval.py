"""lm-evaluation-harness adapter: an Om checkpoint as the lm-eval model ``om``.

From the shell (lm-eval's own command line, with ``om`` registered first)::

    python -m om.integrations.lm_eval --model om --model_args checkpoint=runs/enwik8 \\
        --tasks wikitext --device cpu --batch_size 8

From Python::

    import lm_eval
    import om.integrations.lm_eval  # registers "om"
    lm_eval.simple_evaluate(model="om", model_args={"checkpoint": "runs/enwik8"}, tasks=["wikitext"])

Why a wrapper and not a plain ``lm_eval --model om``: lm-eval 0.4 finds models only in its own
registry (its built-in table plus whatever was registered with `register_model` in the running
process); it reads no package entry points, and ``--include_path`` adds tasks, not models. So the
adapter must be imported before lm-eval resolves ``--model``; ``python -m om.integrations.lm_eval``
does exactly that and then runs lm-eval's own CLI, with every lm-eval flag unchanged.

What each request type runs:
- `loglikelihood_rolling`: `om.evaluate.evaluate` on the text's UTF-8 bytes, so the score is
  exactly what ``om eval`` reports: every token of the text predicted from the document separator
  and everything before it (lm-eval's "conditioned on EOS"), the whole text in one stream.
- `loglikelihood`: the context is read once (`om.evaluate.read_context`; continuations sharing a
  context share the read), then each continuation's tokens are scored from that state, several
  continuations side by side in the batch dimension.
- `generate_until`: `om.sampling.generate_ids` from the context (greedy unless ``do_sample`` or a
  temperature > 0 asks for sampling), stopping at the first ``until`` string (cut off, as lm-eval
  expects), at ``max_gen_toks`` tokens, or when the model ends the document (its separator).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import defaultdict

import numpy as np
import torch

try:
    from lm_eval.api import registry as _registry
    from lm_eval.api.model import LM
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError("om.integrations.lm_eval needs lm-evaluation-harness: pip install 'om[lm_eval]'") from _err

from om.errors import OmUserError, renamed_keys

log = logging.getLogger(__name__)

MODEL_NAME = "om"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256
# What lm-eval itself passes to every model (from its --max_batch_size / --trust_remote_code flags).
IGNORED_ARGS = ("max_batch_size", "trust_remote_code")
MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")  # lm-eval's aliases, in its priority order
_WARNED: set[str] = set()  # generation kwargs already warned about


def _device(name) -> torch.device:
    """lm-eval's CLI always passes --device (default cuda:0); like lm-eval's own HF model, a CUDA
    device on a machine without CUDA falls back to the CPU (with a warning) instead of failing."""
    from om.device import resolve_device

    name = "auto" if name in (None, "", "auto") else str(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("om: device %s (lm-eval's --device defaults to cuda:0), but this machine has no CUDA GPU; using the CPU", name)
        return torch.device("cpu")
    with renamed_keys({"device": "model_args device"}):
        return resolve_device(name)


def _batch_size(value) -> int:
    from om.evaluate import check_batch_size

    if isinstance(value, str) and value.startswith("auto"):
        return DEFAULT_BATCH_SIZE  # Om's memory does not grow with the input: no search needed
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise OmUserError(f"model_args batch_size {value!r}: must be a whole number", key="batch_size") from None
    with renamed_keys({"batch_size": "model_args batch_size"}):
        return check_batch_size(size)


def _generation_options(gen_kwargs: dict | None) -> tuple[list[str], int, dict]:
    """lm-eval's generation kwargs -> (until strings, max tokens, `om.sampling.SamplingOptions` fields).

    As lm-eval normalises them: `until` a string or a list; the first of max_gen_toks /
    max_new_tokens / max_tokens / max_completion_tokens (default 256); sampling when do_sample is
    true, or when it is unset and temperature > 0; greedy otherwise. Sampling without a temperature
    uses 1.0. top_k, top_p and seed are honoured; other keys are ignored with a warning.
    """
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    until = [until] if isinstance(until, str) else list(until or [])
    if not all(isinstance(s, str) for s in until):
        raise OmUserError(f"until {until!r}: must be a string or a list of strings", key="until")
    given = [kwargs.pop(key) for key in MAX_TOKEN_KEYS if kwargs.get(key) is not None]
    for key in MAX_TOKEN_KEYS:
        kwargs.pop(key, None)
    max_tokens = int(given[0]) if given else DEFAULT_MAX_GEN_TOKS
    if max_tokens < 0:
        raise OmUserError(f"max_gen_toks {max_tokens}: must be >= 0", key="max_gen_toks")
    do_sample = kwargs.pop("do_sample", None)
    temperature = kwargs.pop("temperature", None)
    sample = bool(do_sample) if do_sample is not None else float(temperature or 0.0) > 0.0
    options = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": kwargs.pop("seed", None)}
    top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
    if sample:
        options["temperature"] = 1.0 if temperature is None else float(temperature)
        options["top_k"] = int(top_k or 0)
        options["top_p"] = 1.0 if top_p is None else float(top_p)
    unused = tuple(sorted(set(kwargs) - _WARNED))
    if unused:
        _WARNED.update(unused)  # once per key, not once per request
        log.warning("om: generation kwargs %s are not used by the om model", list(unused))
    return until, max_tokens, options


class OmLM(LM):
    """An Om checkpoint behind lm-eval's `LM` interface, registered as the model ``om``.

    model_args: checkpoint (a checkpoint folder or a run folder, as ``om eval`` takes; required),
    device (auto | cpu | cuda | cuda:N; default auto), batch_size (streams or continuations side by
    side; default 8, "auto" means 8). Given in model_args they win over lm-eval's --device and
    --batch_size flags (which lm-eval always passes, with defaults cuda:0 and 1).

    In: lists of lm-eval `Instance`s whose `args` are (text,) for `loglikelihood_rolling`,
    (context, continuation) for `loglikelihood`, (context, gen_kwargs) for `generate_until`.
    Out, one per request in order: the log-likelihood in nats (float); (sum of the continuation's
    token log-probabilities in nats, whether greedy decoding would produce exactly those tokens);
    the generated text (str, invalid UTF-8 from a bytes model replaced by U+FFFD).
    """

    def __init__(self, checkpoint=None, device="auto", batch_size=DEFAULT_BATCH_SIZE, **kwargs):
        super().__init__()
        from om.checkpoint import load_checkpoint

        unknown = sorted(set(kwargs) - set(IGNORED_ARGS))
        if unknown:
            raise OmUserError(
                f"model_args {', '.join(unknown)}: not an argument of the om model (it takes checkpoint, device, batch_size)"
            )
        if checkpoint in (None, ""):
            raise OmUserError("model_args checkpoint: missing; give checkpoint=CKPT (a checkpoint or run folder)", key="checkpoint")
        self._device = _device(device)
        self.batch_size = _batch_size(batch_size)
        self.checkpoint = load_checkpoint(str(checkpoint), device=self._device)
        self.model, self.codec = self.checkpoint.model, self.checkpoint.codec
        self._banned = _never_generated(self.codec, self.model.config.vocab_size).to(self._device)

    # lm-eval passes its --device / --batch_size as "additional config"; model_args take precedence.
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "OmLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "OmLM":
        defaults = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**defaults, **dict(arg_dict or {})})

    def get_model_info(self) -> dict:
        return {"om_checkpoint": str(self.checkpoint.path), "om_fingerprint": self.checkpoint.fingerprint}

    # Text -> ids ---------------------------------------------------------------------------------
    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.codec.encode(text.encode("utf-8")), dtype=np.int64)

    def _continuation_ids(self, context: str, context_ids: np.ndarray, continuation: str) -> np.ndarray:
        """The continuation's ids after `context_ids`: cut from encoding the whole text when that
        starts with the context's own encoding (always so for bytes and chars codecs), else the
        continuation encoded alone (a SentencePiece piece spanning the boundary)."""
        whole = self._encode(context + continuation)
        n = len(context_ids)
        if len(whole) >= n and np.array_equal(whole[:n], context_ids):
            return whole[n:]
        return self._encode(continuation)

    # Requests ------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from om.evaluate import evaluate

        texts = [request.args[0] for request in requests]
        result = evaluate(self.model, self.codec, [text.encode("utf-8") for text in texts], batch_size=self.batch_size)
        scores = []
        for text, row in zip(texts, result.inputs):
            scores.append(-row.nll_nats)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), scores[-1])
        return scores

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        from om.evaluate import eval_mode, ids_source, read_context

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        by_context: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            by_context[request.args[0]].append(i)
        with eval_mode(self.model), tqdm(total=len(requests), disable=disable_tqdm, desc="om loglikelihood") as bar:
            for context, indices in by_context.items():
                context_ids = self._encode(context)
                start = read_context(self.model, self.codec, [ids_source("context", context_ids.astype(self.codec.dtype))])
                for b in range(0, len(indices), self.batch_size):
                    chunk = indices[b : b + self.batch_size]
                    continuations = [self._continuation_ids(context, context_ids, requests[i].args[1]) for i in chunk]
                    for i, score in zip(chunk, self._score(start, continuations)):
                        results[i] = score
                        self.cache_hook.add_partial("loglikelihood", requests[i].args, score)
                    bar.update(len(chunk))
        return results

    def _score(self, start, continuations: list[np.ndarray]) -> list[tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each continuation (ids) after the stream `start`.

        The rows run side by side from copies of one state, right-padded to the longest: the model
        is causal, so padding after a row's last token changes none of its predictions. Fed in
        windows (a multiple of segment_len) so the logits stay bounded for long continuations.
        """
        from om.evaluate import default_window
        from om.model.loss import next_token_loss

        rows, longest = len(continuations), max(1, max(len(c) for c in continuations))
        inputs = np.full((rows, longest), start.pending, dtype=np.int64)
        targets = np.zeros((rows, longest), dtype=np.int64)
        mask = np.zeros((rows, longest), dtype=bool)
        for r, ids in enumerate(continuations):
            inputs[r, 1 : len(ids)] = ids[:-1]
            targets[r, : len(ids)] = ids
            mask[r, : len(ids)] = True
        state = start.state_for(self.model, rows)
        window = default_window(self.model.config, rows)
        logprob = np.zeros(rows, dtype=np.float64)
        greedy = np.ones(rows, dtype=bool)
        for a in range(0, longest, window):
            x = torch.from_numpy(inputs[:, a : a + window]).to(self._device)
            y = torch.from_numpy(targets[:, a : a + window]).to(self._device)
            logits, state = self.model(x, state)
            nll = next_token_loss(logits, y, reduction="none").double().cpu().numpy()
            best = logits.float().masked_fill(self._banned, float("-inf")).argmax(-1).cpu().numpy()
            m = mask[:, a : a + window]
            logprob -= np.where(m, nll, 0.0).sum(axis=1)
            greedy &= np.where(m, best == targets[:, a : a + window], True).all(axis=1)
        return [(float(lp), bool(g)) for lp, g in zip(logprob, greedy)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        outputs = []
        for request in tqdm(requests, disable=disable_tqdm, desc="om generate_until"):
            context, gen_kwargs = request.args
            text = self._generate(context, *_generation_options(gen_kwargs))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def _generate(self, context: str, until: list[str], max_tokens: int, options: dict) -> str:
        from om.sampling import MAX_BYTES, SamplingOptions, TokenDecoder, encode_prompt, generate_ids

        if options["seed"] is None:  # drawn from torch's RNG, so lm-eval's --seed makes sampling repeatable
            options = {**options, "seed": int(torch.randint(0, 2**62, (1,)))}
        sampling = SamplingOptions(max_bytes=MAX_BYTES, **options).validate()
        prompt = encode_prompt(self.codec, context.encode("utf-8"))
        stops = [s.encode("utf-8") for s in until if s]
        longest_stop = max((len(s) for s in stops), default=0)
        decoder, out = TokenDecoder(self.codec), b""

        def first_stop(since: int) -> int | None:
            hits = [at for at in (out.find(s, max(0, since - longest_stop)) for s in stops) if at >= 0]
            return min(hits) if hits else None

        with contextlib.closing(generate_ids(self.model, self.codec, prompt, sampling)) as tokens:
            for _, token in zip(range(max_tokens), tokens):
                before = len(out)
                out += decoder.push(token)
                cut = first_stop(before)
                if cut is not None:
                    return out[:cut].decode("utf-8", "replace")
        before = len(out)
        out += decoder.flush()
        cut = first_stop(before)
        return (out if cut is None else out[:cut]).decode("utf-8", "replace")


def _never_generated(codec, vocab_size: int) -> torch.Tensor:
    """(V,) bool: the ids greedy generation never picks (`om.sampling`: special ids other than the
    separator, and a bytes codec's reserved ids above it), masked when deciding `is_greedy`."""
    from om.sampling import special_ids

    sep = int(codec.doc_sep_id)
    banned = torch.zeros(vocab_size, dtype=torch.bool)
    ids = [i for i in special_ids(codec) if i != sep and i < vocab_size]
    if ids:
        banned[ids] = True
    if codec.name == "bytes":
        banned[256:] = True
        banned[sep] = False
    return banned


def register() -> None:
    """Register `OmLM` as lm-eval's model ``om`` (once; importing this module does it)."""
    import lm_eval.models  # noqa: F401  lm-eval fills its built-in table lazily only while the registry is empty

    if MODEL_NAME not in _registry.MODEL_REGISTRY:
        _registry.register_model(MODEL_NAME)(OmLM)


register()


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``om`` model registered: `python -m om.integrations.lm_eval
    --model om --model_args checkpoint=CKPT --tasks ...` takes every flag `lm_eval` takes. An Om
    error (a missing checkpoint, a bad model_args value) is one line on stderr and exit code 2."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except OmUserError as err:
        print(f"om lm_eval: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
