"""What the config can get wrong that `RunConfig.check` cannot see without data or a model, checked
before any step does work: the prompt dataset's column and values, the chat template a chat-format
task needs, and the layer names LoRA adapts. Each problem is one line (ConfigError / DataError)."""

from __future__ import annotations

from lmpref.config import RunConfig


def preflight(cfg: RunConfig) -> None:
    from lmpref.core import lora
    from lmpref.core.loading import load_tokenizer
    from lmpref.tasks.prompts import check_chat_template, check_task

    check_task(cfg.task)
    if cfg.task.query_column and cfg.task.query_format == "chat":
        check_chat_template(load_tokenizer(cfg.model.name, cfg.model.cache_dir), cfg.task, cfg.model.name)
    lora.check_config(cfg)
