"""lm-evaluation-harness: `om eval`'s word counts, and the `om` model adapter end to end.

The word-count tests need nothing extra. The adapter tests run lm-eval's own evaluator
(`simple_evaluate`, and once its command line through `python -m om.integrations.lm_eval`) on
tasks over local jsonl files, with tiny random checkpoints; they are skipped when lm-eval is not
installed (`pip install -e ".[test]"` installs it). Nothing is downloaded: the Hugging Face
libraries run offline and the json dataset cache lives in the test's temporary folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from om.evaluate import InputSource, TokenReader, WordCounter, evaluate, ids_source
from tests.test_eval_support import (  # noqa: F401
    TEXT,
    argmax_rollout,
    bytes_codec,
    chars_codec,
    model_for,
    one_thread,
    run_cli,
    save_tiny_checkpoint,
    stream_nll,
)

pytestmark = pytest.mark.usefixtures("one_thread")

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
for _key, _value in OFFLINE.items():  # before lm-eval imports `datasets`, which reads them once
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
WORDY = "  Om reads\tbytes.\n\nEvery layer\u00a0keeps a state;\u3000naïve café 東京 🙂 end \u2029x "
DOCS = [
    "Om reads bytes.  Every layer keeps a state of S vectors.\n",
    "naïve café, 東京 🙂\nsecond line with  two spaces ",
    "x",
    " leading space and a tab\there",
]


def nll(model, codec, text: str) -> float:
    """NLL (nats) of the text's tokens from the separator, one forward call (0 for no text)."""
    return stream_nll(model, codec, text.encode()) if text else 0.0


def lm_eval_words(text: str) -> int:
    """lm-evaluation-harness's count for word_perplexity (`Task.count_words`)."""
    return len(re.split(r"\s+", text))


# Word counting (om eval's `words` / `word_perplexity`) ---------------------------------------------
def test_word_count_is_split_invariant():
    data = WORDY.encode("utf-8")
    expected = lm_eval_words(WORDY)
    for cut in range(len(data) + 1):  # a split at every byte: inside characters and whitespace runs
        counter = WordCounter()
        counter.add(data[:cut])
        counter.add(data[cut:])
        counter.end_document()
        assert counter.words == expected, cut
    for chunk in (1, 2, 3, 7, len(data)):
        reader = TokenReader(InputSource("w", open_bytes=lambda: io.BytesIO(data)), bytes_codec(), chunk_bytes=chunk)
        assert sum(len(ids) for ids in reader) == len(data)
        assert reader.words == expected, chunk


def test_word_count_edge_cases():
    for text in [" ", "a", "a ", " a", "\n\n", "a\u2003b", "\x1c", "tab\tand\x0bvt"]:
        counter = WordCounter()
        counter.add(text.encode())
        assert counter.words == lm_eval_words(text), repr(text)
    empty = WordCounter()
    empty.add(b"")
    assert empty.words == 0  # no text, no words (lm-eval would count 1 for "")
    invalid = WordCounter()
    invalid.add(b"\xff\xfe a")
    assert invalid.words == 2  # invalid UTF-8 counts as non-space characters


def test_word_count_of_ids_source_counts_each_document():
    codec = chars_codec()
    docs = ["a b", "c", "", "  d e  f", TEXT]
    sep = np.array([codec.doc_sep_id], dtype=codec.dtype)
    parts = [sep]
    for doc in docs:
        parts += [codec.encode(doc.encode()), sep]
    ids = np.concatenate(parts)
    expected = sum(lm_eval_words(d) for d in docs if d)  # a separator ends a word: "a b" and "c" are 3 words
    for chunk in (1, 2, 5, len(ids)):
        reader = TokenReader(ids_source("split", ids), codec, chunk_bytes=chunk)
        list(reader)
        assert reader.words == expected, chunk
        assert reader.documents == 4


class _NoDecodeCodec:
    """A codec that cannot turn ids back into bytes: words cannot be counted."""

    def __init__(self, codec):
        self._codec = codec

    def __getattr__(self, name):
        if name == "decode":
            raise AttributeError(name)
        return getattr(self._codec, name)


def test_eval_reports_words_and_word_perplexity():
    codec = bytes_codec()
    model = model_for(codec)
    texts = [t.encode() for t in DOCS]
    result = evaluate(model, codec, texts + [b""], batch_size=2, chunk_bytes=5)
    for text, row in zip(DOCS, result.inputs):
        assert row.words == lm_eval_words(text)
        assert row.word_perplexity == pytest.approx(math.exp(row.nll_nats / row.words), rel=1e-12)
    assert result.inputs[-1].words == 0 and result.inputs[-1].word_perplexity is None
    report = result.to_dict()
    assert report["words"] == sum(lm_eval_words(t) for t in DOCS)
    assert report["word_perplexity"] == pytest.approx(math.exp(report["nll_nats"] / report["words"]), rel=1e-12)
    assert [r["words"] for r in report["inputs"]] == [lm_eval_words(t) for t in DOCS] + [0]

    ids = np.concatenate([codec.encode(texts[0]), [codec.doc_sep_id], codec.encode(texts[1])]).astype(codec.dtype)
    split = evaluate(model, codec, [ids_source("val", ids)]).total
    assert split.words == lm_eval_words(DOCS[0]) + lm_eval_words(DOCS[1])
    undecodable = evaluate(model, _NoDecodeCodec(codec), [ids_source("val", ids), texts[2]])
    assert undecodable.inputs[0].words is None and undecodable.inputs[1].words == 1
    assert undecodable.total.words is None and undecodable.to_dict()["word_perplexity"] is None


# The lm-eval adapter -------------------------------------------------------------------------------
ROLLING_TASK = "om_test_rolling"
CHOICE_TASK = "om_test_choice"
GENERATE_TASK = "om_test_generate"
PROMPT = "Om reads "
MAX_GEN = 24


def _task_yaml(name: str, data: Path, cache: Path, body: str) -> str:
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        f"  cache_dir: {json.dumps(str(cache))}\ntest_split: test\n{body}"
    )


def _greedy_stop(model, codec) -> tuple[str, bytes]:
    """A stop string that greedy generation from PROMPT meets (its first ASCII byte after the
    first), and the greedy bytes before it: what generate_until must return."""
    out = bytes(argmax_rollout(model, codec, list(PROMPT.encode()), MAX_GEN))
    at = next(i for i in range(1, len(out)) if out[i] < 0x80)
    return chr(out[at]), out[: out.index(out[at])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("lm_eval")
    import om.integrations.lm_eval as adapter

    folder = tmp_path_factory.mktemp("lm_eval")
    ckpt, model, codec = save_tiny_checkpoint(folder / "ckpt", seed=3)
    tasks, cache = folder / "tasks", folder / "hf-cache"
    tasks.mkdir()
    for i, text in enumerate(DOCS):
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    (folder / "docs.jsonl").write_text("".join(json.dumps({"page": t}) + "\n" for t in DOCS))
    (tasks / "rolling.yaml").write_text(
        _task_yaml(
            ROLLING_TASK,
            folder / "docs.jsonl",
            cache,
            'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{page}}"\nmetric_list:\n'
            "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        )
    )
    choices = [
        {"question": "Om reads", "choices": ["bytes", "tokens", "words."], "answer": 0},
        {"question": "", "choices": ["a", "bc"], "answer": 1},
    ]
    (folder / "choice.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    (tasks / "choice.yaml").write_text(
        _task_yaml(
            CHOICE_TASK,
            folder / "choice.jsonl",
            cache,
            'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
        )
    )
    stop, before_stop = _greedy_stop(model, codec)
    (folder / "generate.jsonl").write_text(json.dumps({"prompt": PROMPT, "answer": "x"}) + "\n")
    (tasks / "generate.yaml").write_text(
        _task_yaml(
            GENERATE_TASK,
            folder / "generate.jsonl",
            cache,
            'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\n'
            f"generation_kwargs:\n  until: [{json.dumps(stop)}]\n  max_gen_toks: {MAX_GEN}\n"
            "metric_list:\n  - metric: exact_match\n",
        )
    )
    return {
        "adapter": adapter, "folder": folder, "ckpt": ckpt, "model": model, "codec": codec, "tasks": tasks,
        "stop": stop, "before_stop": before_stop, "choices": choices,
    }


@pytest.fixture(scope="module")
def evaluated(setup):
    """One run of lm-eval's evaluator over the three local tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="om",
        model_args={"checkpoint": str(setup["ckpt"]), "device": "cpu", "batch_size": 2},
        tasks=[ROLLING_TASK, CHOICE_TASK, GENERATE_TASK],
        task_manager=TaskManager(include_path=str(setup["tasks"]), include_defaults=False),
        log_samples=True,
    )


def _instances(request_type: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type, {}, a, i) for i, a in enumerate(args)]


def _om_eval_json(setup) -> dict:
    files = [setup["folder"] / f"doc{i}.txt" for i in range(len(DOCS))]
    result = run_cli(["eval", setup["ckpt"], *files, "--json", "--device", "cpu", "--batch-size", "2"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_registered_beside_lm_evals_own_models(setup):
    from lm_eval.api import registry

    assert registry.get_model("om") is setup["adapter"].OmLM
    assert "hf" in registry.MODEL_REGISTRY  # registering first must not hide lm-eval's built-in models


def test_rolling_task_metrics_equal_om_eval(setup, evaluated):
    got = evaluated["results"][ROLLING_TASK]
    expected = _om_eval_json(setup)
    assert expected["words"] == sum(lm_eval_words(t) for t in DOCS)
    assert got["bits_per_byte,none"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)
    assert got["byte_perplexity,none"] == pytest.approx(expected["byte_perplexity"], rel=1e-6)
    assert got["word_perplexity,none"] == pytest.approx(expected["word_perplexity"], rel=1e-6)
    # each document's score is `om eval` of that text alone, from the separator
    model, codec = setup["model"], setup["codec"]
    for sample in evaluated["samples"][ROLLING_TASK]:
        text = sample["doc"]["page"]
        assert -sample["resps"][0][0] == pytest.approx(nll(model, codec, text), rel=1e-5)


def test_loglikelihood_is_the_difference_of_rolling_scores(setup):
    lm = setup["adapter"].OmLM(checkpoint=str(setup["ckpt"]), device="cpu", batch_size=3)
    model, codec = setup["model"], setup["codec"]
    pairs = [("Om reads", " bytes"), ("Om reads", " b"), ("Om reads", " tokens, many of them"), ("", "x"), ("naïve ", "café 東京")]
    scores = lm.loglikelihood(_instances("loglikelihood", pairs))
    rolling = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(c + x,) for c, x in pairs] + [(c,) for c, _ in pairs]))
    for (context, cont), (logprob, greedy), whole, alone in zip(pairs, scores, rolling, rolling[len(pairs) :]):
        direct = nll(model, codec, context) - nll(model, codec, context + cont)
        assert logprob == pytest.approx(direct, rel=1e-5, abs=1e-5)
        assert logprob == pytest.approx(whole - alone, rel=1e-5, abs=1e-5)
        assert isinstance(greedy, bool)
    # greedy: a prefix of the model's argmax rollout is greedy; the same with its last byte changed is not
    for prompt in ("Om reads", "Every", "a", "state", "x"):  # the first whose rollout starts with ASCII text
        rollout = bytes(argmax_rollout(model, codec, list(prompt.encode()), 6))
        best = rollout[: next((i for i, b in enumerate(rollout) if b >= 0x80), len(rollout))]
        if best:
            break
    assert best, "no prompt with an ASCII greedy continuation"
    other = best[:-1] + bytes([(best[-1] + 1) % 128])
    (_, yes), (_, no) = lm.loglikelihood(_instances("loglikelihood", [(prompt, best.decode()), (prompt, other.decode())]))
    assert yes is True and no is False


def test_loglikelihood_of_a_chars_model(tmp_path):
    adapter = pytest.importorskip("om.integrations.lm_eval")
    ckpt, model, codec = save_tiny_checkpoint(tmp_path / "chars", codec=chars_codec(), seed=1)
    lm = adapter.OmLM(checkpoint=str(ckpt), device="cpu")
    pairs = [("Om reads bytes.", " Every layer"), ("naïve", " café, 東京")]
    for (context, cont), (logprob, _) in zip(pairs, lm.loglikelihood(_instances("loglikelihood", pairs))):
        direct = nll(model, codec, context) - nll(model, codec, context + cont)
        assert logprob == pytest.approx(direct, rel=1e-5, abs=1e-5)


def test_multiple_choice_task_scores_each_choice(setup, evaluated):
    lm = setup["adapter"].OmLM(checkpoint=str(setup["ckpt"]), device="cpu")
    samples = evaluated["samples"][CHOICE_TASK]
    assert len(samples) == len(setup["choices"])
    for sample in samples:
        doc = sample["doc"]
        pairs = [(doc["question"], " " + choice) for choice in doc["choices"]]  # lm-eval's default target delimiter
        direct = lm.loglikelihood(_instances("loglikelihood", pairs))
        assert [r[0][0] for r in sample["resps"]] == pytest.approx([d[0] for d in direct], rel=1e-5)
        best = int(np.argmax([d[0] for d in direct]))
        assert sample["acc"] == float(best == doc["answer"])


def test_generate_until_is_greedy_and_stops_at_until(setup, evaluated):
    model, codec = setup["model"], setup["codec"]
    [sample] = evaluated["samples"][GENERATE_TASK]
    expected = setup["before_stop"].decode("utf-8", "replace")
    assert sample["resps"][0][0] == expected
    lm = setup["adapter"].OmLM(checkpoint=str(setup["ckpt"]), device="cpu")
    full = bytes(argmax_rollout(model, codec, list(PROMPT.encode()), 10))
    kinds = [
        {"until": [], "max_gen_toks": 10},  # no stop string: max_gen_toks tokens (bytes), greedy
        {"until": setup["stop"], "max_gen_toks": MAX_GEN, "do_sample": False},
        {"until": ["\x00never", setup["stop"]], "max_gen_toks": MAX_GEN, "temperature": 0},
        {"until": [], "max_gen_toks": 0},
    ]
    out = lm.generate_until(_instances("generate_until", [(PROMPT, k) for k in kinds]))
    assert out[0] == full.decode("utf-8", "replace")
    assert out[1] == out[2] == expected
    assert out[3] == ""
    sampled = [{"until": [], "max_gen_toks": 16, "do_sample": True, "temperature": 1.5, "seed": 7}] * 2
    a, b = lm.generate_until(_instances("generate_until", [(PROMPT, k) for k in sampled]))
    assert a == b  # the same seed, the same sample


def test_bad_model_args_are_one_line_errors(setup):
    from om.errors import OmUserError

    OmLM = setup["adapter"].OmLM
    cases = [
        ("", "checkpoint: missing"),
        (f"checkpoint={setup['folder'] / 'missing'}", "no such checkpoint"),
        (f"checkpoint={setup['ckpt']},dtype=float16", "dtype: not an argument"),
        (f"checkpoint={setup['ckpt']},batch_size=0", "batch_size 0"),
        (f"checkpoint={setup['ckpt']},device=tpu9", "device 'tpu9'"),
    ]
    for args, message in cases:
        with pytest.raises(OmUserError) as err:
            OmLM.create_from_arg_string(args, {"device": "cpu", "batch_size": 1})
        assert message in str(err.value) and "\n" not in str(err.value)
    # lm-eval always passes its --device (default cuda:0) and --batch_size: model_args win, CUDA falls back to the CPU
    lm = OmLM.create_from_arg_string(f"checkpoint={setup['ckpt']},batch_size=3", {"device": "cuda:0", "batch_size": 1})
    assert lm.batch_size == 3
    import torch

    if not torch.cuda.is_available():
        assert lm.device.type == "cpu"


def test_the_command_line_reports_om_errors_in_one_line(setup, monkeypatch, capsys):
    import lm_eval.__main__

    adapter = setup["adapter"]
    seen = []

    def cli_evaluate():  # stands in for lm-eval's CLI: it builds the model from the command line
        seen.append(list(sys.argv[1:]))
        adapter.OmLM.create_from_arg_string(sys.argv[-1], {"device": "cpu"})

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", cli_evaluate)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() sets the command line lm-eval parses
    with pytest.raises(SystemExit) as exit:
        adapter.main(["--model", "om", "--model_args", f"checkpoint={setup['folder'] / 'gone'}"])
    assert exit.value.code == 2 and seen == [["--model", "om", "--model_args", f"checkpoint={setup['folder'] / 'gone'}"]]
    err = capsys.readouterr().err.strip()
    assert err.startswith("om lm_eval: ") and "no such checkpoint or run folder" in err and "\n" not in err


def test_lm_eval_command_line_runs_the_om_model(setup, evaluated, tmp_path):
    """The documented command: lm-eval's CLI, every flag its own, with `om` registered first."""
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    command = [
        sys.executable, "-m", "om.integrations.lm_eval", "--model", "om",
        "--model_args", f"checkpoint={setup['ckpt']},batch_size=2", "--device", "cpu",
        "--tasks", ROLLING_TASK, "--include_path", str(setup["tasks"]), "--output_path", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("results_*.json"))
    got = json.loads(results_file.read_text())["results"][ROLLING_TASK]
    assert got["bits_per_byte,none"] == pytest.approx(evaluated["results"][ROLLING_TASK]["bits_per_byte,none"], rel=1e-6)
    assert "bits_per_byte" in done.stdout  # lm-eval's own results table
