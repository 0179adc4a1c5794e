"""The one device parser: every accepted form, and the refusals with their message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engines.devices import DEVICE_RULE, Device, DeviceError, parse_device

ACCEPTED = [
    ("cpu", Device("cpu"), "cpu"),
    ("cuda", Device("cuda"), "cuda"),
    ("cuda:0", Device("cuda", 0), "cuda:0"),
    ("cuda:1", Device("cuda", 1), "cuda:1"),
    ("cuda:12", Device("cuda", 12), "cuda:12"),
    ("cuda:01", Device("cuda", 1), "cuda:1"),
    ("cuda:00", Device("cuda", 0), "cuda:0"),
]

REFUSED = [
    "", "gpu", "GPU", "CPU", "Cuda", "CUDA", "cuda:", "cuda:-1", "cuda:+1", "cuda:1:2", "cuda:0x1",
    "cuda: 1", " cuda", "cuda ", "cuda\n", "cpu:0", "cpu:1", "cpu:", "mps", "meta", "cuda:a", "cuda1",
    "cuda:1.0", "cuda:\u0663", "cuda:\u00b2", "cuda:\uff11",
]


@pytest.mark.parametrize(("text", "device", "canonical"), ACCEPTED)
def test_accepted_forms(text: str, device: Device, canonical: str) -> None:
    parsed = parse_device(text)
    assert parsed == device
    assert str(parsed) == canonical
    assert parse_device(str(parsed)) == parsed


@pytest.mark.parametrize("text", REFUSED)
def test_refused_forms_state_the_rule_and_the_value(text: str) -> None:
    with pytest.raises(DeviceError) as info:
        parse_device(text)
    assert str(info.value) == f"device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0), got {text!r}"
    assert isinstance(info.value, ValueError)


def test_refusal_message_golden() -> None:
    with pytest.raises(DeviceError, match=r"^device must be 'cpu', 'cuda' or 'cuda:N' \(N >= 0\), got 'gpu'$"):
        parse_device("gpu")
    assert DEVICE_RULE == "device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0)"


def test_non_string_is_refused() -> None:
    with pytest.raises(DeviceError, match="got None"):
        parse_device(None)  # type: ignore[arg-type]


def test_cuda_index() -> None:
    assert parse_device("cuda").cuda_index == 0
    assert parse_device("cuda:3").cuda_index == 3
    assert parse_device("cuda:3").is_cuda and not parse_device("cpu").is_cuda
    with pytest.raises(DeviceError, match="cpu is not a CUDA device"):
        _ = parse_device("cpu").cuda_index


@pytest.mark.parametrize(("kind", "index", "message"), [
    ("gpu", None, "device kind must be 'cpu' or 'cuda', got 'gpu'"),
    ("cpu", 0, "the cpu device takes no index, got 0"),
    ("cuda", -1, "a CUDA device index must be an integer >= 0, got -1"),
    ("cuda", True, "a CUDA device index must be an integer >= 0, got True"),
])
def test_device_invariants(kind: str, index: int | None, message: str) -> None:
    with pytest.raises(DeviceError) as info:
        Device(kind, index)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_module_is_dependency_free() -> None:
    code = ("import sys, engines.devices; "
            "print(sorted(m for m in ('torch', 'numpy', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
