"""Prompts from a dataset as a task (lmpref.tasks.prompts): any column of a JSONL / Parquet / CSV file or a
`save_to_disk` folder, as text or as chat rendered with the tokenizer's template; a long prompt keeps its
end; bad input is one line before any work; and the whole loop (sample, label, reward model, PPO with
LoRA, evaluate) runs on chat prompts with the tiny model."""

import json
import shutil

import pytest

from lmpref.cli import main
from lmpref.config import ConfigError, TaskConfig, make_config
from lmpref.core.loading import load_tokenizer, resolve_model
from lmpref.io import read_jsonl, write_jsonl
from lmpref.tasks import make_query_source
from lmpref.tasks.books import QuerySource
from lmpref.tasks.prompts import PromptSource

TINY = ["--preset", "test", "--scale", "tiny"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = "the cat sat on a mat and looked at the sky while the dog ran around the garden".split()


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The tiny GPT-2 with a chat template (its own tokenizer has none)."""
    d = tmp_path_factory.mktemp("tiny-chat") / "tiny-chat"
    shutil.copytree(resolve_model("tiny-gpt2"), d)
    tok = load_tokenizer(str(d))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(d)
    return str(d)


def _prompts(n: int = 40) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(5 + i % 7)) + f" number {i}?" for i in range(n)]


def _task(path, **kw) -> TaskConfig:
    defaults = {"query_dataset": str(path), "query_length": 16, "min_query_tokens": 2, "holdout_fraction": 0.25}
    return TaskConfig(**defaults | kw)


def _write(path, rows):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    elif path.suffix == ".csv":
        ds.to_csv(str(path), index=False)
    elif path.suffix == ".jsonl":
        write_jsonl(path, rows)
    else:
        ds.save_to_disk(str(path))


@pytest.mark.parametrize("name", ["p.jsonl", "p.parquet", "p.csv", "saved"])
def test_a_text_column_of_any_dataset_is_the_query_set(tmp_path, name):
    tok = load_tokenizer("tiny-gpt2")
    prompts = _prompts()
    _write(tmp_path / name, [{"id": i, "prompt": p, "other": "x"} for i, p in enumerate(prompts)])
    task = _task(tmp_path / name, query_column="prompt")
    train, held = PromptSource(tok, task, "train"), PromptSource(tok, task, "eval")
    assert len(train.pool) + len(held.pool) == len(prompts) and train.pool and held.pool
    assert {q.text for q in train.pool}.isdisjoint(q.text for q in held.pool)
    assert {q.text for q in train.pool + held.pool} == set(prompts)  # whole prompts, no cut
    assert all(q.ids == tok.encode(q.text) for q in train.pool)
    sampled = train.sample(70, "k")  # more than the pool: fresh shuffles, ids kept unique
    assert len({q.id for q in sampled}) == 70 and sampled == train.sample(70, "k")
    assert isinstance(make_query_source(tok, task), PromptSource)


def test_books_and_the_text_jsonl_path_are_unchanged(tmp_path):
    tok = load_tokenizer("tiny-gpt2")
    assert isinstance(make_query_source(tok, TaskConfig()), QuerySource)
    write_jsonl(tmp_path / "t.jsonl", [{"text": "A. " + " ".join(WORDS * 30) + "."}])
    assert isinstance(make_query_source(tok, TaskConfig(query_dataset=str(tmp_path / "t.jsonl"))), QuerySource)


def test_chat_prompts_render_with_the_template_and_keep_their_end(tmp_path, chat_model):
    tok = load_tokenizer(chat_model)
    long = " ".join(WORDS * 4) + " Which animal ran?"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long}]},
        {"messages": "What did the cat do?"},  # a string is one user message
    ]
    write_jsonl(tmp_path / "c.jsonl", rows)
    chat = {"query_column": "messages", "query_format": "chat", "query_length": 32, "holdout_fraction": 0}
    task = _task(tmp_path / "c.jsonl", **chat)
    pool = {len(q.text): q for q in PromptSource(tok, task, "train").pool}
    assert len(pool) == 2
    whole = tok.apply_chat_template(rows[0]["messages"], add_generation_prompt=True, tokenize=False)
    cut = pool[max(pool)]
    assert len(tok.encode(whole)) > 32 and cut.ids == tok.encode(whole)[-32:]
    assert cut.text.endswith("Which animal ran?\n<|assistant|>")
    assert pool[min(pool)].text == "<|user|>What did the cat do?\n<|assistant|>"


def test_the_shipped_chat_prompts_keep_the_instruction(chat_model):
    cfg = make_config("chat", "tiny")
    assert (cfg.task.query_dataset, cfg.task.query_format, cfg.model.lora_rank) == ("tldr-prompts", "chat", 8)
    source = PromptSource(load_tokenizer(chat_model), cfg.task, "train")
    assert len(source.pool) > 150
    assert all(q.text.endswith("Summarize this post in one sentence.\n<|assistant|>") for q in source.pool)


def test_a_bad_prompt_config_fails_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match="task.query_format='html'"):
        make_config("test", "tiny", {"task.query_format": "html"})
    with pytest.raises(ConfigError, match="name it with task.query_column"):
        make_config("test", "tiny", {"task.query_format": "chat"})


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_prompt_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, chat_model):
    write_jsonl(tmp_path / "p.jsonl", [{"question": p, "id": 1} for p in _prompts(4)])
    run = tmp_path / "run"
    base = ["run", *TINY, "--run-dir", str(run), "--set", f"task.query_dataset={tmp_path / 'p.jsonl'}"]
    err = _one_line_error(capsys, [*base, "--set", "task.query_column=prompt"])
    assert f"{tmp_path / 'p.jsonl'}: no column 'prompt' (task.query_column); its columns: id, question" in err
    err = _one_line_error(capsys, [*base, "--set", "task.query_column=question", "--set", "task.query_format=chat"])
    assert "task.query_format=chat needs a chat template" in err and "'tiny-gpt2'" in err
    err = _one_line_error(capsys, ["run", *TINY, "--run-dir", str(run), "--set", "task.query_column=question"])
    assert "task.query_dataset='books' is a built-in task" in err
    assert not run.exists()
    # A Hub id with no network: one line. `datasets` reads the offline flags on import: set them as read.
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = ["--set", "task.query_dataset=no-such-org/no-such-prompts", "--set", "task.query_column=prompt"]
    err = _one_line_error(capsys, ["run", *TINY, "--run-dir", str(run), *hub])
    assert "no-such-org/no-such-prompts: not a local file or directory" in err and "pass the local path" in err
    assert not run.exists()


def test_the_whole_loop_on_chat_prompts_with_lora(tmp_path, chat_model):
    """sample -> label (programmatic) -> reward model -> PPO (LoRA) -> evaluate, on chat prompts."""
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in _prompts(60)])
    run = tmp_path / "run"
    sets = {
        "model.name": chat_model,
        "model.lora_rank": 4,
        "task.query_dataset": str(tmp_path / "chat.jsonl"),
        "task.query_column": "messages",
        "task.query_format": "chat",
        "task.query_length": 24,
    }
    argv = ["run", *TINY, "--run-dir", str(run)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    samples = [r for _, r in read_jsonl(run / "samples.jsonl")]
    assert samples and all(r["query"].endswith("?\n<|assistant|>") for r in samples)
    assert (run / "labels.jsonl").exists() and (run / "reward_model" / "config.json").exists()
    assert (run / "policy" / "config.json").exists() and (run / "policy" / "adapter" / "adapter_config.json").exists()
    assert json.loads((run / "eval.json").read_text())
