#!/usr/bin/env bash
# Run the service of compose.yaml with the host's display.
#
# `x11passthrough args --format compose --service app` prints a Compose override file that gives
# the service the display, and keeps the display lent until it is stopped. This script starts it
# in the background, waits until the file is complete, runs the service with both files, and
# stops it again.
#
# Usage: IMAGE=my-image bash examples/compose/run.sh [x11passthrough options, e.g. --xvfb]
# Exit status: the service's own (docker-compose up --exit-code-from), 2 if the display could
# not be lent. COMPOSE="docker compose" uses Compose v2 instead of docker-compose.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
service=app
work=$(mktemp -d)
override="$work/x11.override.yaml"
read -r -a compose <<<"${COMPOSE:-docker-compose}"
compose+=(--project-name "x11passthrough-example-$$" -f "$here/compose.yaml" -f "$override")

x11passthrough "$@" args --format compose --service "$service" >"$override" 2>"$work/args.log" &
lender=$!

finish() {
  status=$?
  if [ -s "$override" ]; then
    "${compose[@]}" down --timeout 5 >/dev/null 2>&1 || true
  fi
  kill -INT "$lender" 2>/dev/null || true
  wait "$lender" 2>/dev/null || true
  rm -rf "$work"
  exit "$status"
}
trap finish EXIT

# The file is complete once x11passthrough says the display is lent (it prints that after it).
for _ in $(seq 600); do
  if grep -q "is lent until" "$work/args.log"; then
    break
  fi
  if ! kill -0 "$lender" 2>/dev/null; then
    cat "$work/args.log" >&2
    exit 2
  fi
  sleep 0.1
done
if ! grep -q "is lent until" "$work/args.log"; then
  echo "run.sh: x11passthrough did not lend the display within 60 s" >&2
  exit 2
fi

"${compose[@]}" up --exit-code-from "$service"
