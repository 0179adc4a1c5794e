"""config/streamer.service: the directives the daemon relies on, checked by systemd's own tools.

``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and
``/usr/local/bin/streamer`` is not installed here, so the checks run on a temporary copy whose
ExecStart points at ``/bin/true`` (same arguments); everything else is verified as shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from streamer.config import ShutdownConfig

UNIT = Path(__file__).resolve().parents[2] / "config" / "streamer.service"
EXEC = "/usr/local/bin/streamer"


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``section → key → values`` (repeated keys such as DeviceAllow= keep every value)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            parsed.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        parsed.setdefault(section, {}).setdefault(key, []).append(value)
    return parsed


def seconds(value: str) -> float:
    """A systemd time span with plain seconds or an s/min suffix (what this unit uses)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return directives(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{section}.{key}: expected one value, got {values}"
    return values[0]


def test_service_lifecycle(unit: dict[str, dict[str, list[str]]]) -> None:
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": f"{EXEC} run --config /etc/maskrcnn-streamer/streamer.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "DevicePolicy": "closed",
        "SupplementaryGroups": "video",
        "CacheDirectory": "maskrcnn-streamer",
    }
    assert {k: one(unit, k) for k in expected} == expected
    assert seconds(one(unit, "WatchdogSec")) == 30
    assert seconds(one(unit, "RestartSec")) > 0
    assert "multi-user.target" in unit["Install"]["WantedBy"]


def test_stop_timeout_exceeds_the_daemon_shutdown_timeout(unit: dict[str, dict[str, list[str]]]) -> None:
    """systemd must not SIGKILL a daemon that is still within its own drain-and-flush time."""
    default_drain = ShutdownConfig().timeout_s
    assert seconds(one(unit, "TimeoutStopSec")) >= default_drain + 10


def test_gpu_nodes_are_the_only_extra_devices(unit: dict[str, dict[str, list[str]]]) -> None:
    allowed = unit["Service"]["DeviceAllow"]
    for node in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0", "char-nvidia*"):
        assert f"{node} rw" in allowed
    assert all(re.match(r"(/dev/nvidia|char-nvidia|char-video4linux |char-drm )", a) for a in allowed), allowed
    assert "PrivateDevices" not in unit["Service"]  # it would hide /dev/nvidia*


def shipped_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an existing binary (see the module docstring)."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC} ") == 1
    copy = tmp_path / "maskrcnn-streamer.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true "))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    copy = shipped_copy(tmp_path)
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and unparsable values, but names the file in a warning.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if copy.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    copy = shipped_copy(tmp_path)
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate units offline: {result.stderr.strip()[:200]}")
    # 0 = fully locked down, 10 = unprotected; < 2.5 is rated "OK". GPU access and the network
    # (streams, brokers) account for most of what remains.
    assert float(match.group(1)) < 2.5, result.stdout
