"""The ``streamer run`` configuration: validation messages, secrets, overrides, ``config check``."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.config import (
    ConfigError,
    Overrides,
    SourceConfig,
    StreamerConfig,
    load_config,
    validate_config,
    with_defaults,
)
from streamer.config_cli import check_command
from streamer.redact import RedactingFilter, redact_secrets, redact_url

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "streamer.toml"


def errors_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data, origin="test.toml")
    return str(info.value).splitlines()


def test_shipped_config_is_the_builtin_default() -> None:
    assert load_config(SHIPPED) == StreamerConfig()


def test_each_error_names_key_path_value_and_rule() -> None:
    lines = errors_of({
        "sources": [{"name": "cam1", "url": "rtsp://h/s", "transport": "tcpx"}],
        "sinks": [{"type": "mqtt", "host": "b", "port": "abc"}],
        "batching": {"max_batch_size": 0},
    })
    assert lines == [
        "test.toml: sources[0].transport = 'tcpx': Input should be 'tcp' or 'udp'",
        "test.toml: sinks[0].port = 'abc': Input should be a valid integer, unable to parse string as an integer",
        "test.toml: batching.max_batch_size = 0: Input should be greater than or equal to 1",
    ]


def test_unknown_and_missing_keys() -> None:
    lines = errors_of({"sources": [{"name": "cam1", "urll": "x"}], "bathcing": {}})
    assert "test.toml: sources[0].url: required key is missing" in lines
    unknown = next(line for line in lines if ".urll" in line)
    assert "unknown key; allowed keys here: name, url," in unknown
    assert any(line.startswith("test.toml: bathcing: unknown key; allowed keys here: sources, sinks,")
               for line in lines)


def test_rules_across_keys() -> None:
    dup = errors_of({"sources": [{"name": "a", "url": "x.mp4"}, {"name": "a", "url": "y.mp4"}]})
    assert dup == ["test.toml: sources: source names must be unique; repeated: a"]  # tables are not echoed
    loop = errors_of({"sources": [{"name": "a", "url": "rtsp://h/s", "loop": True}]})
    assert len(loop) == 1 and "sources[0]" in loop[0] and "loop applies to file sources only" in loop[0]
    transport = errors_of({"sources": [{"name": "a", "url": "clip.mp4", "transport": "tcp"}]})
    assert "transport applies to rtsp:// and rtsps:// URLs only" in transport[0]
    bad_addr = errors_of({"metrics": {"address": "localhost"}})
    assert bad_addr == ["test.toml: metrics.address = 'localhost': expected HOST:PORT with PORT in 0..65535, "
                        "got 'localhost'"]


def test_toml_syntax_and_missing_file_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[sources]]\nname = cam1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not valid TOML: .*line 2"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read the config file"):
        load_config(tmp_path / "nope.toml")


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_PASS", "p@ss:w/rd")
    monkeypatch.setenv("CAM_TOKEN", "t0k")
    src = SourceConfig(name="cam", url="rtsp://10.0.0.5/live?token=${CAM_TOKEN}",
                       username_env="CAM_USER", password_env="CAM_PASS")
    assert src.resolved_url() == "rtsp://admin:p%40ss%3Aw%2Frd@10.0.0.5/live?token=t0k"
    assert "p@ss" not in src.url and "${CAM_TOKEN}" in src.url  # the config keeps references only
    monkeypatch.delenv("CAM_PASS")
    lines = errors_of({"sources": [{"name": "cam", "url": "rtsp://h/s", "password_env": "CAM_PASS"}]})
    assert lines == ["test.toml: sources[0].password_env = 'CAM_PASS': environment variable 'CAM_PASS' "
                     "is not set; export it before starting"]
    lines = errors_of({"sources": [{"name": "cam", "url": "rtsp://h/${NOPE_X}"}]})
    assert "environment variable(s) NOPE_X referenced as ${...} are not set" in lines[0]


def test_source_kinds() -> None:
    assert SourceConfig(name="a", url="rtsps://cam/s").kind == "live"
    assert SourceConfig(name="a", url="https://cdn/x.m3u8").drops_frames
    assert SourceConfig(name="a", url="/dev/video0").input_format == "v4l2"
    file = SourceConfig(name="a", url="/srv/clip.mp4")
    assert file.kind == "file" and not file.drops_frames
    assert SourceConfig(name="a", url="/srv/clip.mp4", live=True).drops_frames


def test_command_line_overrides_replace_lists_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[[sources]]\nname = "file"\nurl = "a.mp4"\n[inference]\ndevice = "cuda"\n')
    cfg = load_config(path, Overrides(sources=("cam1=rtsp://h/1", "cam2=rtsp://h/2"),
                                      sinks=("jsonl:/tmp/x.jsonl", "zmq:tcp://127.0.0.1:5599"),
                                      model="m.safetensors", metrics_address="off"))
    assert [s.name for s in cfg.sources] == ["cam1", "cam2"]
    assert [s.type for s in cfg.sinks] == ["jsonl", "zmq"]
    assert cfg.inference.model == "m.safetensors" and cfg.inference.device == "cuda"
    assert not cfg.metrics.enabled
    with pytest.raises(ConfigError, match=r"--source: expected NAME=URL .* got 'cam1'"):
        load_config(None, Overrides(sources=("cam1",)))
    with pytest.raises(ConfigError, match=r"--sink: bad sink spec 'ftp:x'"):
        load_config(None, Overrides(sinks=("ftp:x",)))
    with pytest.raises(ConfigError, match=r"command line: metrics.address = 'nohost'"):
        load_config(None, Overrides(metrics_address="nohost"))


def test_defaults_are_the_demo_video_and_stdout() -> None:
    cfg = with_defaults(StreamerConfig())
    (demo,) = cfg.sources
    assert demo.name == "demo" and demo.loop and demo.realtime and Path(demo.url).exists()
    assert [(s.type, getattr(s, "path", None)) for s in cfg.sinks] == [("jsonl", "-")]


def test_redaction_of_urls_and_log_records() -> None:
    assert redact_url("rtsp://admin:hunter2@cam1:554/s") == "rtsp://***@cam1:554/s"
    assert redact_url("open mqtt://u@b/t and rtsp://x:y@h/p failed") == "open mqtt://***@b/t and rtsp://***@h/p failed"
    assert redact_url("/srv/a@b.mp4 rtsp://cam/s") == "/srv/a@b.mp4 rtsp://cam/s"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "opening %s", ("rtsp://u:pw@h/s",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "opening rtsp://***@h/s"


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_command(argparse.Namespace(file=SHIPPED)) == 0
    assert capsys.readouterr().out.strip() == (
        f"{SHIPPED}: ok (no sources: the demo video, no sinks: JSONL on stdout)")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sources]]\nname = "cam1"\nurl = "rtsp://h/s"\ntransport = "quic"\n[batching]\nmax_wait = 1\n')
    result = subprocess.run([sys.executable, "-m", "streamer.cli", "config", "check", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {bad}: sources[0].transport = 'quic': Input should be 'tcp' or 'udp'",
        f"error: {bad}: batching.max_wait = 1: unknown key; allowed keys here: "
        "max_batch_size, max_wait_s, queue_size, staleness_s",
    ]



def test_config_check_loads_no_model_runtime_and_no_mask_encoder() -> None:
    """``config check`` imports the configuration code only: torch, numpy, PyAV and pycocotools
    stay unloaded (each costs from a tenth of a second to seconds at start)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "streamer.cli", "config", "check",
                             str(SHIPPED)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith(f"{SHIPPED}: ok"), result
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "streamer.config" in imported and "streamer.sinks.mqtt" in imported
    heavy = {"torch", "numpy", "av", "pycocotools", "engines.runner", "engines.masks"}
    assert not heavy & imported, sorted(heavy & imported)


def test_run_refuses_a_bad_config_before_loading_the_daemon(tmp_path: Path) -> None:
    """``run`` validates first: a bad config exits 2 without importing the daemon or torch."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[batching]\nmax_wait = 1\n')
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "streamer.cli", "run", "--config", str(bad)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "max_wait = 1: unknown key" in result.stderr, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "streamer.config" in imported and not {"torch", "streamer.daemon"} & imported

# -- secrets never in errors; permanent mistakes refused -----------------------------------------

SECRET = "s3cretPW"


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m streamer.cli ARGV`` (``run`` stops at the config: it is invalid)."""
    return subprocess.run([sys.executable, "-m", "streamer.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def assert_error_lines(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 2, every stderr line an ``error:`` line, no secret, each expected fragment present."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert SECRET not in result.stderr and "Traceback" not in result.stderr
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)


def test_config_errors_never_print_credentials(tmp_path: Path) -> None:
    """A credentialed URL in a table with an error elsewhere, a ${VAR} error on it, an MQTT
    password without username: the key and the rule are named, the secret is not printed, by
    ``config check`` and by ``run``, from the file, ``*_env`` variables and the command line."""
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""
[[sources]]
name = "cam1"
url = "rtsp://user:{SECRET}@127.0.0.1/cam"
loop = true
[[sources]]
name = "cam2"
url = "rtsp://user:{SECRET}@127.0.0.1/${{NOT_SET_VAR_X}}"
[[sources]]
name = "cam3"
url = "rtsps://cdn.example/live?token={SECRET}&x=1"
transport = "quic"
[[sources]]
name = "cam4"
url = "rtsp://127.0.0.1:99999/x"
password_env = "CAM4_PASSWORD"
username_env = "CAM4_USER_NOT_SET"
[[sinks]]
type = "mqtt"
host = "127.0.0.1"
password = "{SECRET}"
[[sinks]]
type = "mqtt"
host = "127.0.0.1"
username = "u"
password = 12345
""")
    env = {"CAM4_PASSWORD": SECRET}
    expected = ("sources[0]: loop applies to file sources only",
                "sources[1].url = 'rtsp://***@127.0.0.1/${NOT_SET_VAR_X}': environment variable(s) NOT_SET_VAR_X",
                "sources[2].transport = 'quic'",
                "sources[3].username_env = 'CAM4_USER_NOT_SET': environment variable",
                "sinks[0]: a password needs a username",
                "sinks[1].password = ***: Input should be a valid string")
    assert_error_lines(run_cli("config", "check", str(bad), env=env), *expected)
    assert_error_lines(run_cli("run", "--config", str(bad), env=env), *expected)
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert SECRET not in str(info.value)

    cli = run_cli("run", "--source", f"cam=rtsp://user:{SECRET}@127.0.0.1:99999/x", "--metrics-address", "off")
    assert_error_lines(cli, "command line: sources[0].url = 'rtsp://***@127.0.0.1:99999/x': invalid port")
    assert_error_lines(run_cli("run", "--source", f"rtsp://user:{SECRET}@h/s"), "--source: expected NAME=URL")
    assert_error_lines(run_cli("run", "--sink", f"mqtt//user:{SECRET}@h/t"), "--sink: bad sink spec")
    assert_error_lines(run_cli("run", "--sink", f"mqtt://user:{SECRET}@h:0/t"), "--sink: bad sink spec")


@pytest.mark.parametrize(("body", "expected"), [
    ('[[sources]]\nname = "c"\nurl = "rtsp://"', "sources[0].url = 'rtsp://': no host in the URL"),
    ('[[sources]]\nname = "c"\nurl = "rtsp://127.0.0.1:99999/x"', "sources[0].url = 'rtsp://127.0.0.1:99999/x': "
     "invalid port"),
    ('[[sources]]\nname = "c"\nurl = "clip.mp4"\nloop = "yes"', "sources[0].loop = 'yes': expected true or false"),
    ('[inference]\nbackend = "bogus"', "inference.backend = 'bogus': Input should be 'pytorch', 'onnxruntime' "
     "or 'tensorrt'"),
    ('[inference]\ndevice = "gpu"', "inference.device = 'gpu': device must be 'cpu', 'cuda' or 'cuda:N' (N >= 0)"),
    ('[[sinks]]\ntype = "jsonl"\npath = "/nonexistent/dir/out.jsonl"',
     "sinks[0].path = '/nonexistent/dir/out.jsonl': directory '/nonexistent/dir' does not exist"),
])
def test_permanent_mistakes_are_config_errors(tmp_path: Path, body: str, expected: str) -> None:
    """No retry fixes these: ``config check`` finds them, ``run`` refuses to start (exit 2)."""
    path = tmp_path / "s.toml"
    path.write_text(body + "\n")
    assert_error_lines(run_cli("config", "check", str(path)), f"{path}: {expected}")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)


def test_unwritable_jsonl_sink_stops_run_at_start(tmp_path: Path) -> None:
    """``--sink jsonl:/nonexistent/dir/out.jsonl`` used to retry forever, drop everything and
    exit 0; now ``run`` exits 2 before starting anything. A directory or a file under a file too."""
    result = run_cli("run", "--sink", "jsonl:/nonexistent/dir/out.jsonl", "--metrics-address", "off")
    assert_error_lines(result, "--sink: bad sink spec 'jsonl:/nonexistent/dir/out.jsonl': path: directory "
                               "'/nonexistent/dir' does not exist")
    (tmp_path / "file").write_text("")
    for path, reason in ((tmp_path, "is a directory"), (tmp_path / "file" / "x.jsonl", "is not a directory")):
        with pytest.raises(ConfigError, match=reason):
            load_config(None, Overrides(sinks=(f"jsonl:{path}",)))
    assert load_config(None, Overrides(sinks=(f"jsonl:{tmp_path / 'ok.jsonl'}",))).sinks


def test_reconnect_defaults_catch_flapping_cameras() -> None:
    """The backoff cap stays below the healthy period, and that period is short: a camera up for
    15-25 s between outages resets its backoff each time and is retried within 2 s of returning."""
    r = SourceConfig(name="c", url="rtsp://h/s").reconnect
    assert r.max_delay_s <= 2.0 < r.healthy_after_s <= 5.0
    assert r.initial_delay_s <= r.max_delay_s and r.max_attempts is None
    shipped = SHIPPED.read_text()
    assert f"# max_delay_s = {r.max_delay_s}" in shipped and f"# healthy_after_s = {r.healthy_after_s}" in shipped


def test_redaction_of_query_tokens_and_bare_userinfo() -> None:
    assert redact_url("https://cdn/x.m3u8?token=abc&x=1") == "https://cdn/x.m3u8?token=***&x=1"
    assert redact_secrets("mqtt//u:pw@h/t") == "mqtt//***@h/t"
    assert redact_secrets("/srv/a@b.mp4") == "/srv/a@b.mp4"


def test_operations_doc_log_level_drop_in_parses() -> None:
    """docs/operations.md's ``ExecStart=`` with ``--log-level`` must be a valid command line
    (it said to add the option after ``run``: "unrecognized arguments", a restart loop)."""
    import shlex

    from streamer.cli import build_parser

    doc = (REPO / "docs" / "operations.md").read_text()
    lines = [line for line in doc.splitlines() if line.startswith("ExecStart=") and "--log-level" in line]
    assert lines, "the drop-in example is gone"
    for line in lines:
        argv = shlex.split(line.removeprefix("ExecStart="))[1:]
        args = build_parser().parse_args(argv)
        assert args.command == "run" and args.log_level == "debug"
