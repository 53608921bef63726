#!/usr/bin/env bash
# Make sure a Chromium executable is installed for the browser test (tests/ui/, Playwright drives it).
# As root it installs the Debian package chromium; otherwise, or when the install fails, it prints the exact
# command and carries on: the browser test then skips, naming what is missing.
set -euo pipefail
PKG=chromium
for exe in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$exe" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" = "0" ]; then
  echo "Installing the browser for the UI test: $PKG" >&2
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PKG" >/dev/null; then
    exit 0
  fi
  echo "Installing $PKG failed: the browser test (tests/ui/) will skip." >&2
else
  echo "No Chromium: the browser test (tests/ui/) will skip. Run: sudo apt-get update && sudo apt-get install -y $PKG" >&2
fi
exit 0
