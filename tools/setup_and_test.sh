#!/usr/bin/env bash
# Set-up + test suite on a fresh machine: Debian packages the sandbox tests need, a fresh venv,
# jaxdiff with its test extras (CPU torch wheel pinned), the layer contract (lint-imports), then
# pytest. The real bend/hvm binaries in ../shared/bin, when that folder exists, go on PATH so the
# real-Bend tests run. Usage: bash tools/setup_and_test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d ../shared/bin ]; then
  PATH="$(cd ../shared/bin && pwd):$PATH"
  export PATH
fi
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null
  else
    echo "note: bubblewrap (bwrap) is not installed; sandbox tests will report it" >&2
  fi
fi
VENV=${JAXDIFF_VENV:-.venv}
rm -rf "$VENV"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"
lint-imports
set +e
python -m pytest -q -rs -p no:cacheprovider --durations=25 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
