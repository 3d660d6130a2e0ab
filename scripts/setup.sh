#!/usr/bin/env bash
# Everything a fresh machine needs: system tools (espeak-ng and ffmpeg for the tests' speech and
# media, hdf5-tools for h5ls, chromium for the build report's page test) and the package with its test
# extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in espeak-ng:espeak-ng ffmpeg:ffmpeg h5ls:hdf5-tools chromium:chromium; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python -m pip install -q --disable-pip-version-check -e ".[test]"
