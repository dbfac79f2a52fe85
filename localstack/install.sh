#!/usr/bin/env bash
# Install LocalStack's in-process runtime into its own venv; a no-op when it is already there.
#
#   localstack/install.sh          # .venv-localstack with localstack/requirements.txt
#
# LocalStack's runtime needs Python >= 3.12 (dropbatch itself stays on 3.11): LOCALSTACK_PYTHON,
# else python3.13 / python3.12 on PATH, else pyenv's 3.13 / 3.12 (this machine image has both).
# The venv is redone only when requirements.txt changes (sha256 stamp), so a second run is instant;
# a half-finished install (no stamp) is completed by pip. LOCALSTACK_VENV moves the venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOCALSTACK_VENV:-$ROOT/.venv-localstack}"
REQUIREMENTS="$ROOT/localstack/requirements.txt"

say() { printf 'localstack: %s\n' "$*" >&2; }

find_python() {
    if [[ -n "${LOCALSTACK_PYTHON:-}" ]]; then echo "$LOCALSTACK_PYTHON"; return; fi
    local candidate
    for candidate in python3.13 python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        # pyenv shims exist for versions that are not active: ask the interpreter itself.
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            command -v "$candidate"; return
        fi
    done
    return 1
}

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
python="$(find_python)" || { say "needs Python >= 3.12 (set LOCALSTACK_PYTHON)"; exit 1; }
say "installing into $VENV with $python"
"$python" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
echo "$want" > "$stamp"
