"""One metrics log per run: metrics.jsonl (one object per step) and the same scalars in TensorBoard."""

from __future__ import annotations

from pathlib import Path

from lmpref.io import append_jsonl


class MetricsLog:
    """Metrics as JSONL (one object per step) and TensorBoard scalars, namespaced like `objective/kl`."""

    def __init__(self, path: Path, tb_dir: Path | None = None):
        self.path = path
        self.tb = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tb_dir))

    def __call__(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
