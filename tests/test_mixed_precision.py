"""`ppo.mixed_precision`: 'auto' resolves to bf16 only where the device runs bf16 in hardware."""

import pytest
import torch

from lmpref.config import ConfigError, make_config
from lmpref.core import accel


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")]
)
def test_auto_is_bf16_on_a_cpu_with_bf16_hardware_only(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert accel.resolve_mixed_precision("auto", "cpu") == expected
    assert accel.resolve_mixed_precision("no", "cpu") == "no"  # explicit values are kept
    assert accel.resolve_mixed_precision("bf16", "cpu") == "bf16"
    with accel.autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
    with accel.autocast("cpu", "no"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_bad_mixed_precision_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="use no, bf16 or auto"):
        make_config("test", "tiny", {"ppo.mixed_precision": "fp8"})
    with pytest.raises(ValueError, match="'no', 'bf16' or 'auto'"):
        accel.resolve_mixed_precision("fp16", "cpu")
