# Sourced by scripts/run, scripts/test and scripts/bench: make sure .venv exists and
# holds this checkout installed with its dev extra. Re-installs when pyproject.toml
# changes (a stamp file records the hash of the last install).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${APPLIANCE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' 2>/dev/null; then
    echo "error: Python 3.11 or newer is required as '$PY' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up a virtual environment in $VENV ..." >&2
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.appliance-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing the appliance and its dependencies into $VENV ..." >&2
    # mappy (minimap2, for the align-qc job) builds from source: it needs a C compiler and
    # zlib's headers. Install them where we can; otherwise say what is missing.
    if [ ! -e /usr/include/zlib.h ]; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing zlib1g-dev (mappy builds against it)" >&2
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zlib1g-dev build-essential >/dev/null; } \
                || echo "warning: could not install zlib1g-dev; installing mappy will fail" >&2
        else
            echo "warning: /usr/include/zlib.h is missing: install zlib's headers (Debian: zlib1g-dev) and a C compiler, or mappy will not build" >&2
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev]" >&2
    echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
