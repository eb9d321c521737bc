#!/usr/bin/env bash
# The project's one test command (the README's and CI's): installs what is missing, then runs
#   cargo fmt --check, clippy -D warnings, builds the gateway, `portcullis check` on the example
#   conf/, and every test of the workspace (unit, integration, doc; --no-fail-fast, so one failing
#   test binary does not hide the results of the others). Everything is built with
#   --all-features: the `test-plugins` feature registers the platform probe plugin that
#   tests/platform.rs drives (never part of a release build).
#
# Every step runs even when an earlier one failed (a clippy warning should not hide a failing test);
# the exit status is non-zero if any step failed, and the failed steps are listed at the end.
#
# Environment:
#   PORTCULLIS_SKIP_SETUP=1     skip scripts/setup.sh (packages already installed)
#   RUST_TEST_THREADS           test threads per test binary (default 2: the machines have 2 cores)
#   PORTCULLIS_TEST_TIMEOUT     wall-clock limit of the test step (default 45m), so a hung test
#                               fails the run with output instead of eating CI's whole budget
#   extra arguments             passed to `cargo test` (e.g. `scripts/test.sh --test deploy`)
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# One target dir and the debug profile for every step, so build, check and test share compiled
# dependencies instead of building them twice.
target_dir="${CARGO_TARGET_DIR:-target}"
# In CI a Cargo.lock that does not match Cargo.toml is an error, not something to fix silently.
locked=()
[ "${CI:-}" = "true" ] && locked=(--locked)

failed=()
step() {
    local name="$1"
    shift
    printf '\n==> %s\n' "$name"
    local start=$SECONDS
    if "$@"; then
        printf '==> %s: ok (%ss)\n' "$name" "$((SECONDS - start))"
    else
        printf '==> %s: FAILED (%ss)\n' "$name" "$((SECONDS - start))"
        failed+=("$name")
        return 1
    fi
}

if [ "${PORTCULLIS_SKIP_SETUP:-}" != "1" ]; then
    # Without the toolchain's prerequisites nothing below can mean anything.
    step "setup" bash scripts/setup.sh || exit 1
fi

step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --all-features "${locked[@]}" -- -D warnings
if step "cargo build" cargo build --all-features "${locked[@]}" --bin portcullis; then
    step "portcullis check --conf conf" "$target_dir/debug/portcullis" check --conf conf
fi
step "cargo test" timeout --kill-after=30s "${PORTCULLIS_TEST_TIMEOUT:-45m}" \
    cargo test --workspace --all-features --no-fail-fast "${locked[@]}" "$@"

echo
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'scripts/test.sh: FAILED steps: %s\n' "$(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')"
    exit 1
fi
echo "scripts/test.sh: all steps passed"
