#!/usr/bin/env bash
# Everything a fresh machine needs. `tools/setup.sh` installs the package (torch from PyPI or the
# local wheel store); `tools/setup.sh --test` also installs the test dependencies and the real peers
# the tests talk to (mosquitto, GStreamer's RTSP server, promtool, systemd-analyze).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--test" ]]; then
  if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto prometheus systemd python3-gi \
      gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
      gstreamer1.0-plugins-ugly iproute2 util-linux >/dev/null
  fi
  python3 -m pip install -q -e '.[test]'
else
  python3 -m pip install -q -e .
fi
