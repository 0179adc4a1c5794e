"""``event_loop``: the daemon on uvloop where it is installed, on asyncio's loop on request, the
same messages either way; a loop that cannot run is refused at start, naming the key."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streamer import event_loop
from streamer.config import ConfigError, StreamerConfig, load_config
from streamer.daemon import Daemon
from streamer.replay import ReplayRunner
from tests.streamer.daemon_process import encode_video, read_jsonl

pytestmark = pytest.mark.timeout(120)


async def _running_loop() -> str:
    return event_loop.loop_name(asyncio.get_running_loop())


def test_auto_is_uvloop_where_installed_and_asyncio_is_the_standard_loop() -> None:
    assert event_loop.uvloop_available(), "uvloop is a dependency of the package (pyproject.toml)"
    assert event_loop.run(_running_loop()) == "uvloop"
    assert event_loop.run(_running_loop(), "uvloop") == "uvloop"
    assert event_loop.run(_running_loop(), "asyncio") == "asyncio"
    assert StreamerConfig().event_loop == "auto"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box where uvloop cannot be installed: ``auto`` runs asyncio's loop, and ``"uvloop"`` is a
    configuration error at start that names ``event_loop`` and the remedy."""
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)
    monkeypatch.setattr("streamer.config.uvloop_available", lambda: False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop.run(_running_loop()) == "asyncio"
    with pytest.raises(RuntimeError, match=r'event_loop = "uvloop" but uvloop cannot be imported.*pip install uvloop'):
        event_loop.loop_factory("uvloop")
    config = tmp_path / "streamer.toml"
    config.write_text('event_loop = "uvloop"\n')
    with pytest.raises(ConfigError, match=r"event_loop.*pip install uvloop"):
        load_config(config)


def test_an_unknown_loop_is_refused_naming_the_key_and_the_choices(tmp_path: Path) -> None:
    config = tmp_path / "streamer.toml"
    config.write_text('event_loop = "trio"\n')
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert "event_loop" in str(err.value) and "'auto', 'asyncio' or 'uvloop'" in str(err.value)


def test_the_daemon_publishes_the_same_messages_on_either_loop(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Two file streams through batching, the postprocess pool, tracking and a JSONL sink, once on
    each loop: every frame published once, in order per stream, with the same instances and track
    ids (the messages differ only in ``capture_time``, the wall clock at decoding). The replay's
    boxes stand still, so that the detections do not depend on how the streams interleave."""
    clip = encode_video(tmp_path / "clip.mp4", frames=12)
    caplog.set_level("INFO", logger="streamer.daemon")
    published: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for choice in ("asyncio", "uvloop"):
        out = tmp_path / f"{choice}.jsonl"
        cfg = StreamerConfig.model_validate({
            "sources": [{"name": name, "url": str(clip), "realtime": False} for name in ("a", "b")],
            "sinks": [{"type": "jsonl", "path": str(out)}],
            "metrics": {"enabled": False},
            "event_loop": choice})
        daemon = Daemon(cfg, registry=CollectorRegistry(), runner=ReplayRunner(4, speed_px=0))
        assert event_loop.run(asyncio.wait_for(daemon.run(), 60), cfg.event_loop) == 0
        assert any(r.getMessage().endswith(f", {choice} event loop") for r in caplog.records), caplog.text
        caplog.clear()
        published[choice] = {stream: [{k: v for k, v in m.items() if k != "capture_time"}
                                      for m in read_jsonl(out) if m["stream"] == stream] for stream in ("a", "b")}
    got = published["uvloop"]
    assert [m["frame"] for m in got["a"]] == [m["frame"] for m in got["b"]] == list(range(12))
    assert all(len(m["instances"]) == 4 and m["instances"][0]["track_id"] is not None for m in got["a"][3:])
    assert got == published["asyncio"]
