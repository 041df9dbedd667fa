#!/usr/bin/env bash
# End-to-end test of the editor: runs the real binary in tmux with the tiny-python fixture model,
# types, waits for ghost text, accepts it with Tab, saves, and checks the file on disk; then kills
# an editor with SIGTERM and checks that the unsaved text is offered back on the next open.
#
#   tests/e2e/editor.sh [path/to/infill]      (default: target/debug/infill)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/infill}
model=$root/tests/fixtures/models/tiny-python
work=$(mktemp -d)
session=infill-e2e-$$
trap 'tmux kill-session -t "$session" 2>/dev/null || true; rm -rf "$work"' EXIT
export XDG_STATE_HOME=$work/state XDG_CONFIG_HOME=$work/config

fail() {
    echo "FAIL: $*" >&2
    echo "--- screen ---" >&2
    tmux capture-pane -t "$session" -p >&2 || true
    exit 1
}

# wait_for TEXT [SECONDS]: until TEXT is on the screen.
wait_for() {
    local deadline=$((SECONDS + ${2:-30}))
    until tmux capture-pane -t "$session" -p | grep -qF -- "$1"; do
        ((SECONDS < deadline)) || fail "timed out waiting for: $1"
        sleep 0.1
    done
}

start() {
    tmux new-session -d -s "$session" -x 100 -y 20 \
        "$bin edit '$1' --model '$model' --debounce-ms 30; echo EXITED=\$?; sleep 60"
}

# 1. Type, see ghost text, accept, save.
printf 'def add(a, b):\n' > "$work/a.py"
start "$work/a.py"
wait_for "│ idle"
tmux send-keys -t "$session" Down
tmux send-keys -t "$session" -l '    ret'
# Ghost text is drawn dim (SGR 2) after what was typed.
deadline=$((SECONDS + 30))
until tmux capture-pane -t "$session" -p -e | sed -n 2p | grep -q $'\e\\[[0-9;]*2[;m]'; do
    ((SECONDS < deadline)) || fail "no dim ghost text after typing"
    sleep 0.1
done
wait_for "│ idle"
shown=$(tmux capture-pane -t "$session" -p | sed -n 2p | sed -E 's/^ *2 //')
[[ $shown == "    ret"?* ]] || fail "line 2 should start with what was typed: '$shown'"
tmux send-keys -t "$session" Tab
wait_for "[+]"
tmux send-keys -t "$session" C-s
wait_for "saved"
tmux send-keys -t "$session" C-q
wait_for "EXITED=0"
on_disk=$(sed -n 2p "$work/a.py")
[[ $on_disk == "$shown" ]] || fail "saved line 2 '$on_disk' differs from the screen '$shown'"
echo "ok: typed '    ret', accepted ghost text, saved: '$on_disk'"
tmux kill-session -t "$session"

# 2. SIGTERM with unsaved changes: the original stays, the text is offered back.
printf 'x = 1\n' > "$work/b.py"
start "$work/b.py"
wait_for "Ln 1, Col 1"
tmux send-keys -t "$session" -l 'unsaved '
wait_for "[+]"
pid=$(pgrep -f "$bin edit $work/b.py" | head -1)
kill -TERM "$pid"
wait_for "EXITED=2"
wait_for "unsaved changes were written to"
[[ $(cat "$work/b.py") == "x = 1" ]] || fail "the original was changed"
tmux kill-session -t "$session"
start "$work/b.py"
wait_for "[r] restore"
tmux send-keys -t "$session" r
wait_for "recovered unsaved text"
tmux send-keys -t "$session" C-s
wait_for "saved"
tmux send-keys -t "$session" C-q
wait_for "EXITED=0"
[[ $(cat "$work/b.py") == "unsaved x = 1" ]] || fail "recovered text not saved: $(cat "$work/b.py")"
[[ -z $(ls -A "$XDG_STATE_HOME/infill/recovery") ]] || fail "recovery file left after saving"
echo "ok: SIGTERM kept the unsaved text and the next open restored it"
