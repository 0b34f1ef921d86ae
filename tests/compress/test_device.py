from __future__ import annotations

from typing import get_args

import pytest
import torch

from common.errors import ConfigError
from common.settings import ModelDtype
from compress.device import DTYPES, model_device, resolve_device, resolve_dtype
from slimscout.commands._common import MODEL_DTYPES


def test_cpu_resolves_and_unknown_devices_are_refused() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu-ish'"):
        resolve_device("tpu-ish")
    with pytest.raises(ConfigError, match="unsupported device 'meta'"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_dtype_names_are_one_vocabulary() -> None:
    assert tuple(DTYPES) == get_args(ModelDtype) == MODEL_DTYPES
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ConfigError, match="float16"):
        resolve_dtype("float16")


def test_model_device_follows_the_parameters() -> None:
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
