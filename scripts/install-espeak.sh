#!/usr/bin/env bash
# Install espeak-ng (Debian package), the speech synthesizer the transcription tests use to
# speak a known sentence into a WAV file for Whisper. Idempotent.
set -euo pipefail
log() { echo "[espeak-ng] $*" >&2; }
if command -v espeak-ng >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    log "espeak-ng is not installed and installing it needs root: apt-get install -y espeak-ng"
    exit 1
fi
log "installing the Debian espeak-ng package"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q espeak-ng >&2 || { apt-get update -q >&2 && apt-get install -y -q espeak-ng >&2; }
