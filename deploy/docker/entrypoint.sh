#!/bin/sh
# Container entry point: `docker run IMAGE gateway|watcher|runner|<any dropbatch command>`.
#
# Records which service runs (the HEALTHCHECK probes its port), and for the runner makes
# sure a hub-id DROPBATCH_MODEL is in HF_HOME first: the engine's Ray workers run with
# HF_HUB_OFFLINE=1, so the weights must be local before the engine starts. Set
# DROPBATCH_MODEL_DOWNLOAD=0 to forbid downloads (air-gapped: mount the weights instead).
set -eu

service="${1:-gateway}"
echo "$service" > "${DROPBATCH_SERVICE_FILE:-/tmp/dropbatch-service}"

if [ "$service" = "runner" ] && [ -n "${DROPBATCH_MODEL:-}" ] && [ ! -e "${DROPBATCH_MODEL}" ]; then
    if [ "${DROPBATCH_MODEL_DOWNLOAD:-1}" = "1" ]; then
        echo "entrypoint: fetching ${DROPBATCH_MODEL} into ${HF_HOME:-the hub cache}" >&2
        python -c 'import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])' "${DROPBATCH_MODEL}"
    else
        echo "entrypoint: ${DROPBATCH_MODEL} is not a path and downloads are off (DROPBATCH_MODEL_DOWNLOAD=0)" >&2
    fi
fi

exec dropbatch "$@"
