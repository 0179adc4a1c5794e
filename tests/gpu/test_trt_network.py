"""TensorRT's network definition on this machine: the creation flags the build relies on are set."""

from __future__ import annotations

from types import ModuleType

import pytest

from build_engine.trt_build import create_network, network_flag_names

pytestmark = pytest.mark.gpu


def test_network_is_created_with_the_flags_this_tensorrt_offers(cuda_capability: tuple[int, int],
                                                                  tensorrt: ModuleType) -> None:
    """Every flag :func:`network_flag_names` chooses is set on the network; AOT plugins (TensorRT >= 10.9)
    need ``PREFER_AOT_PYTHON_PLUGINS``, so it must be among them."""
    trt = tensorrt
    flag_enum = trt.NetworkDefinitionCreationFlag
    chosen = network_flag_names(set(flag_enum.__members__))
    assert "PREFER_AOT_PYTHON_PLUGINS" in chosen, f"TensorRT {trt.__version__} lacks AOT Python plugins (needs >= 10.9)"
    network = create_network(trt, trt.Builder(trt.Logger(trt.Logger.WARNING)))
    assert {name for name in flag_enum.__members__ if network.get_flag(getattr(flag_enum, name))} >= set(chosen)
