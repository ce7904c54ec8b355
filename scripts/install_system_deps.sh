#!/usr/bin/env bash
# System packages voicepipe's tests use: espeak-ng (test speech), PortAudio + PulseAudio (real audio without a sound
# card), OpenBLAS (MLX's Linux CPU wheel calls BLAS; preloading OpenBLAS speeds it up), libsndfile, sox.
set -euo pipefail
APT_PACKAGES="espeak-ng libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins libopenblas0-pthread libsndfile1 sox"
BREW_PACKAGES="espeak-ng portaudio sox"

if [ "$(uname -s)" = "Darwin" ]; then
  if command -v brew >/dev/null; then brew install $BREW_PACKAGES; else echo "install Homebrew, then: brew install $BREW_PACKAGES"; fi
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "not a Debian/Ubuntu system: install the equivalents of: $APT_PACKAGES" >&2
  exit 0
fi
missing=""
for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
