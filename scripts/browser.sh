#!/usr/bin/env bash
# The browser the page tests drive: Debian's headless Chromium and its ChromeDriver.
#
#   scripts/browser.sh install   install `chromium` and `chromium-driver` when missing (needs root)
#
# No browser is downloaded by a test tool: both come from the Debian archive.
set -euo pipefail

die() { echo "browser.sh: $*" >&2; exit 1; }

install() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  [ "$(id -u)" = 0 ] || die "chromium and chromium-driver are not installed; run as root or install them (apt-get install chromium chromium-driver)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
}

case "${1:-}" in
  install) install ;;
  *) die "usage: scripts/browser.sh install" ;;
esac
