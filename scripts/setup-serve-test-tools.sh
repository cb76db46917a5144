#!/usr/bin/env bash
# What the tests of `small-agent serve` need besides the build (scripts/test.sh runs this):
#   - Debian's chromium, Node.js and npm, for the browser test;
#   - playwright-core from npm, in $SMALL_AGENT_HOME/node (nothing installed globally);
#   - the openai Python package from PyPI, in the virtualenv $SMALL_AGENT_HOME/test-venv.
# Each part is skipped when it is already there.
set -euo pipefail
home=${SMALL_AGENT_HOME:-$HOME/.cache/small-agent}
# Pinned: the versions the browser and client tests were written against.
playwright_core=playwright-core@1.65.2
openai=openai==3.63.0

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  printf '\n==> installing system packages for the server tests: %s\n' "${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}"
fi
if [ ! -d "$home/node/node_modules/playwright-core" ]; then
  printf '\n==> npm install %s into %s/node\n' "$playwright_core" "$home" >&2
  mkdir -p "$home/node"
  npm install --prefix "$home/node" --no-audit --no-fund --loglevel=error "$playwright_core"
fi
if ! "$home/test-venv/bin/python3" -c 'import openai' 2>/dev/null; then
  printf '\n==> pip install %s into %s/test-venv\n' "$openai" "$home" >&2
  python3 -m venv "$home/test-venv"
  "$home/test-venv/bin/pip" install -q "$openai"
fi
