#!/usr/bin/env bash
# Make sure the built-in data (Debian package dataset-fashion-mnist) is installed.
# As root it installs the package; otherwise it fails with the exact command to run.
set -euo pipefail
PKG=dataset-fashion-mnist
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q "install ok installed"; then
  exit 0
fi
if [ "$(id -u)" = "0" ]; then
  echo "Installing the built-in data: $PKG" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PKG" >/dev/null
else
  echo "The built-in data is missing. Run: sudo apt-get update && sudo apt-get install -y $PKG" >&2
  exit 1
fi
