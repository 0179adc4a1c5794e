"""Device names: the one parser for ``--device``, ``[inference] device`` and every runner.

Standard library only, so configuration checks and command lines can validate a device
without importing torch.

=============  ========================  ==============================================
text           :class:`Device`           meaning
=============  ========================  ==============================================
``cpu``        ``Device("cpu")``         the host
``cuda``       ``Device("cuda")``        the current CUDA device (GPU 0 unless changed)
``cuda:N``     ``Device("cuda", N)``     GPU ``N``; ``N`` is ASCII decimal digits
=============  ========================  ==============================================

Names are case-sensitive and take no spaces. Leading zeros are allowed (``cuda:01`` is
GPU 1); ``str(device)`` gives the canonical form (``cuda:1``). Everything else is refused
with :class:`DeviceError`, whose message states the rule and the value received.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DeviceKind = Literal["cpu", "cuda"]

DEVICE_RULE = "device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0)"
"""The accepted forms, as every refusal states them."""

_FORM = re.compile(r"cpu|cuda(?::([0-9]+))?", re.ASCII)


class DeviceError(ValueError):
    """A device name outside :data:`DEVICE_RULE`; the message gives the rule and the value."""


@dataclass(frozen=True)
class Device:
    """A parsed device name.

    Invariant: ``kind == "cpu"`` has ``index is None``; ``kind == "cuda"`` has ``index is None``
    (the current device) or ``index >= 0``.
    """

    kind: DeviceKind
    index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise DeviceError(f"device kind must be 'cpu' or 'cuda', got {self.kind!r}")
        if self.kind == "cpu" and self.index is not None:
            raise DeviceError(f"the cpu device takes no index, got {self.index!r}")
        if self.index is not None and (isinstance(self.index, bool) or not isinstance(self.index, int)
                                       or self.index < 0):
            raise DeviceError(f"a CUDA device index must be an integer >= 0, got {self.index!r}")

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def cuda_index(self) -> int:
        """The GPU ordinal: ``index``, or 0 for plain ``cuda``. Refused for the CPU."""
        if self.kind != "cuda":
            raise DeviceError(f"{self} is not a CUDA device")
        return 0 if self.index is None else self.index

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(text: str | Device) -> Device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → :class:`Device`; anything else → :class:`DeviceError`.

    A :class:`Device` is returned as it is, so functions may take either form.

    Example: ``parse_device("cuda:1") == Device("cuda", 1)``; ``parse_device("gpu")`` raises
    ``DeviceError("device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0), got 'gpu'")``.
    """
    if isinstance(text, Device):
        return text
    match = _FORM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise DeviceError(f"{DEVICE_RULE}, got {text!r}")
    if text == "cpu":
        return Device("cpu")
    index = match.group(1)
    return Device("cuda", None if index is None else int(index))
