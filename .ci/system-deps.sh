#!/usr/bin/env bash
# Debian packages that the test suite's real components need (headless Chromium for serve's
# page, FFmpeg and GStreamer's RTSP server for watch's streams). Installs only what is missing,
# and only as root; elsewhere it names what is missing and the tests that need it skip.
set -u
packages=(chromium chromium-driver ffmpeg gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: missing ${missing[*]} (not root or no apt-get): the tests that need them skip"
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "system-deps: apt-get failed"; exit 1; }
