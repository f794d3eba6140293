#!/usr/bin/env bash
# Render a run's report.html in headless Chromium, save a screenshot, and fail on what a clinician
# opening it offline would hit: a script error, a console error, or a request for anything outside
# the file (the report must be self-contained).
#
# usage: scripts/check_report_browser.sh RUN_DIR OUT_PNG
#   RUN_DIR   a run folder holding report.html (render it first: `sarco report RUN_DIR`)
#   OUT_PNG   where to write the screenshot (1400 x 4000 px, the top of the report)
# env: CHROMIUM (browser binary; default: chromium, chromium-browser or google-chrome on PATH),
#      CHECK_TIMEOUT_S (default 120), KEEP_LOG=1 (keep the browser log and net log, path printed).
# exit: 0 clean; 1 console error, uncaught exception or network request; 2 usage or missing report;
#       3 no Chromium; 4 the browser failed or wrote no screenshot.
#
# Chromium (>= 120) logs every console message as "INFO:CONSOLE" whatever its level, so errors are
# recognised by their text (Uncaught ..., Failed to load ..., Refused ..., Not allowed ...) as well as
# by an "ERROR:CONSOLE" level where a build prints one. Requests are read from --log-net-log: a
# URL request the page started (its initiator is an origin, unlike the browser's own background
# traffic) is a failure, and the host resolver maps every name to nothing so none can succeed.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 RUN_DIR OUT_PNG" >&2
    exit 2
fi
run_dir=$1
out_png=$2
report="$run_dir/report.html"
if [[ ! -f "$report" ]]; then
    echo "no report.html in $run_dir (render it with: sarco report $run_dir)" >&2
    exit 2
fi

browser=${CHROMIUM:-}
if [[ -z "$browser" ]]; then
    for candidate in chromium chromium-browser google-chrome; do
        if command -v "$candidate" >/dev/null 2>&1; then
            browser=$(command -v "$candidate")
            break
        fi
    done
fi
if [[ -z "$browser" ]]; then
    echo "no Chromium found (Debian: apt-get install -y chromium; or set CHROMIUM=/path/to/chrome)" >&2
    exit 3
fi

python=python3
command -v "$python" >/dev/null 2>&1 || python=python

work=$(mktemp -d)
profile="$work/profile"
log="$work/browser.log"
netlog="$work/netlog.json"
cleanup() {
    if [[ "${KEEP_LOG:-0}" == "1" ]]; then
        echo "browser log: $log; net log: $netlog" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

mkdir -p "$profile" "$(dirname "$out_png")"
out_abs=$(cd "$(dirname "$out_png")" && pwd)/$(basename "$out_png")
report_abs=$(cd "$run_dir" && pwd)/report.html
rm -f "$out_abs"

set +e
timeout "${CHECK_TIMEOUT_S:-120}" "$browser" \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" \
    --host-resolver-rules="MAP * ~NOTFOUND" \
    --log-net-log="$netlog" \
    --screenshot="$out_abs" --window-size=1400,4000 \
    --enable-logging=stderr --v=0 \
    "file://$report_abs" >"$log" 2>&1
status=$?
set -e

if [[ $status -ne 0 ]]; then
    echo "Chromium exited with status $status; last lines of its log:" >&2
    tail -n 20 "$log" >&2
    exit 4
fi
if [[ ! -s "$out_abs" ]]; then
    echo "Chromium wrote no screenshot to $out_abs; last lines of its log:" >&2
    tail -n 20 "$log" >&2
    exit 4
fi

failed=0
console_errors=$(grep -E 'ERROR:CONSOLE|:CONSOLE[:(].*("Uncaught|"[A-Za-z]*Error|"Failed to load|"Refused|"Not allowed)|Uncaught ' \
    "$log" || true)
if [[ -n "$console_errors" ]]; then
    echo "console errors in $report:" >&2
    echo "$console_errors" >&2
    failed=1
fi

# URL requests the page itself started (the browser's own traffic has initiator "not an origin").
requests=$("$python" - "$netlog" <<'PY'
import json, sys

text = open(sys.argv[1], encoding="utf-8", errors="replace").read().rstrip().rstrip(",")
try:
    log = json.loads(text)
except ValueError:  # a log cut short lacks its closing brackets
    log = json.loads(text + "]}")
names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
seen = set()
for event in log.get("events", []):
    params = event.get("params") or {}
    if names.get(event.get("type")) != "URL_REQUEST_START_JOB" or "url" not in params:
        continue
    url, initiator = params["url"], params.get("initiator", "")
    if initiator != "not an origin" and not url.startswith(("data:", "file:")) and url not in seen:
        seen.add(url)
        print(url)
PY
)
if [[ -n "$requests" ]]; then
    echo "the report requested resources outside itself:" >&2
    echo "$requests" >&2
    failed=1
fi

if [[ $failed -ne 0 ]]; then
    exit 1
fi
echo "ok: $report rendered without console errors or network requests; screenshot $out_abs"
