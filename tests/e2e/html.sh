#!/usr/bin/env bash
# `infill score FILE --html` and `infill eval --report` opened in headless Chromium: each page
# renders and logs no console error; the score page holds every coloured token and one margin bar
# per scored line, the eval report its six charts, an interval per bar and the worst proposals.
# Usage: tests/e2e/html.sh [path/to/infill]   (needs chromium)
set -euo pipefail
infill=$(realpath "${1:-target/debug/infill}")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "html e2e: $1" >&2; exit 1; }

file=tests/fixtures/overlay/stats.py
HF_HUB_OFFLINE=1 XDG_STATE_HOME="$dir/state" "$infill" score "$file" --html "$dir/stats.html" 2> "$dir/wrote"
# "wrote PATH (131 tokens, 2.81 bits per token, 21 lines in the margin)"
lines=$(sed -n 's/.* \([0-9]*\) lines in the margin.*/\1/p' "$dir/wrote")
[[ -n $lines && $lines -gt 0 ]] || fail "no margin reported: $(cat "$dir/wrote")"

chrome=(chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir="$dir/profile")
timeout 120 "${chrome[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$dir/stats.html" \
    > "$dir/dom.html" 2> "$dir/console"
grep -q '<table class="code">' "$dir/dom.html" || fail "the page did not render"
if grep -E 'CONSOLE|Uncaught' "$dir/console"; then
    fail "the page logged console errors"
fi
written=$(grep -o 'class="t[0-3]"' "$dir/stats.html" | wc -l)
rendered=$(grep -o 'class="t[0-3]"' "$dir/dom.html" | wc -l)
bars=$(grep -o '<rect' "$dir/dom.html" | wc -l)
rows=$(grep -o '<tr id="L' "$dir/dom.html" | wc -l)
file_lines=$(wc -l < "$file")
((written > 100 && rendered == written)) || fail "tokens: $rendered rendered of $written written"
((bars == lines)) || fail "$bars margin bars for $lines scored lines"
((rows == file_lines + 1)) || fail "$rows rows for $file_lines lines"
timeout 120 "${chrome[@]}" --screenshot="$dir/page.png" --window-size=900,700 \
    "file://$dir/stats.html" 2> /dev/null
size=$(stat -c %s "$dir/page.png")
((size > 20000)) || fail "the screenshot is nearly empty ($size bytes)"

# The eval report, on a few files.
mkdir "$dir/repo"
for i in 0 1 2 3 4 5 6 7; do
    printf 'def area_%s(width, height):\n    total = width * height + %s\n    return total\n' "$i" "$i" > "$dir/repo/shapes_$i.py"
done
HF_HUB_OFFLINE=1 XDG_STATE_HOME="$dir/state" "$infill" eval --repo "$dir/repo" --held-out 0.5 \
    --tasks 8 --max-tokens 16 --score-kb 0 --report "$dir/report.html" > "$dir/eval.out" 2>&1 \
    || fail "eval failed: $(tail -3 "$dir/eval.out")"
timeout 120 "${chrome[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$dir/report.html" \
    > "$dir/report-dom.html" 2> "$dir/report-console"
if grep -E 'CONSOLE|Uncaught' "$dir/report-console"; then
    fail "the report logged console errors"
fi
charts=$(grep -o '<svg class="chart"' "$dir/report-dom.html" | wc -l)
whiskers=$(grep -o 'class="whisker"' "$dir/report-dom.html" | wc -l)
interval_bars=$(sed -n '/Exact match (trimmed)/,/Exact match, raw/p' "$dir/report-dom.html" | grep -o '<rect' | wc -l)
worst=$(grep -o '<tr><td>' "$dir/report-dom.html" | wc -l)
((charts == 6)) || fail "$charts charts in the report, not 6"
((whiskers > 0 && whiskers == interval_bars)) || fail "$whiskers intervals for $interval_bars bars"
((worst == 8)) || fail "$worst worst proposals listed, not 8"
echo "html e2e: passed ($rendered tokens, $bars bars, screenshot $size bytes; report: $charts charts, $whiskers intervals)"
