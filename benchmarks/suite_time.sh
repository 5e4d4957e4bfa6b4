#!/usr/bin/env bash
# The test suite's wall time at an earlier commit and now, in one sitting on one machine:
#     bash benchmarks/suite_time.sh [REV]      (default REV: 43172af, the suite of 190 tests)
# REV's suite runs as its `make test` did (one process); today's as `make test` runs it now (one worker
# per core), whole, and once more on only the test files REV had (the same checks, and those files' newer
# tests with them). Uses .venv (make install).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-43172af}
PYTEST=${PYTEST:-$PWD/.venv/bin/pytest}
old=$(mktemp -d)
git worktree add -q --detach "$old" "$REV"
trap 'git worktree remove --force "$old"' EXIT

timed() {  # label, folder, pytest args...
    local label=$1 folder=$2; shift 2
    local start end summary
    start=$(date +%s.%N)
    summary=$(cd "$folder" && PYTHONPATH=$folder "$PYTEST" -q -p no:cacheprovider "$@" 2>&1 | tail -1)
    end=$(date +%s.%N)
    printf 'suite: %s seconds=%.1f (%s)\n' "$label" "$(echo "$end - $start" | bc)" "$summary"
}

uptime
timed "rev=$REV one process" "$old"
timed "now one worker per core" "$PWD" -n auto --dist loadfile
files=$(cd "$old" && ls tests/test_*.py)
# shellcheck disable=SC2086
timed "now, only $REV's test files, one worker per core" "$PWD" -n auto --dist loadfile $files
# shellcheck disable=SC2086
timed "now, only $REV's test files, one process" "$PWD" $files
uptime
