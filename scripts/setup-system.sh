#!/usr/bin/env bash
# Install the Debian packages widthsearch needs that are missing on this machine.
#
#   scripts/setup-system.sh [PACKAGE ...]    (default: dataset-fashion-mnist)
#
# A package counts as present when dpkg knows it or, for the data package, when its files
# are already in place (/usr/share/datasets/fashion-mnist, or $WIDTHSEARCH_DATA is set).
# As root it runs apt-get directly; otherwise through sudo when sudo works without a
# password; otherwise it prints the one command to run and exits 1.
set -euo pipefail

packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(dataset-fashion-mnist)

present() {
  case "$1" in
    dataset-fashion-mnist)
      if [ -n "${WIDTHSEARCH_DATA:-}" ] || [ -d /usr/share/datasets/fashion-mnist ]; then
        return 0
      fi ;;
    chromium)
      if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
      fi ;;
  esac
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in "${packages[@]}"; do
  present "$p" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

command_line="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" = 0 ]; then
  runner=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  runner=(sudo -n)
else
  echo "missing Debian package(s) ${missing[*]}; install them with: sudo sh -c '$command_line'" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt-get)" >&2
"${runner[@]}" apt-get update -qq
"${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
