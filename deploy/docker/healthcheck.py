"""Docker HEALTHCHECK: GET /health on the port of the service this container runs.

The entry point writes the service name to /tmp/dropbatch-service (or DROPBATCH_SERVICE_FILE).
gateway answers on DROPBATCH_GATEWAY_PORT (8000); watcher and runner on their metrics ports
DROPBATCH_WATCHER_PORT (9101) / DROPBATCH_RUNNER_PORT (9102). Any other command
(`dropbatch bootstrap`, ...) has nothing to probe and counts as healthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORTS = {
    "gateway": ("DROPBATCH_GATEWAY_PORT", 8000),
    "watcher": ("DROPBATCH_WATCHER_PORT", 9101),
    "runner": ("DROPBATCH_RUNNER_PORT", 9102),
}


def main() -> int:
    try:
        with open(os.environ.get("DROPBATCH_SERVICE_FILE") or "/tmp/dropbatch-service", encoding="utf-8") as f:
            service = f.read().strip()
    except OSError:
        return 1
    if service not in PORTS:
        return 0
    variable, default = PORTS[service]
    port = int(os.environ.get(variable) or default)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
