#!/usr/bin/env bash
# Runs every fuzz target (or those named) for a bounded time each, on the stable toolchain.
#
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 300        # 5 minutes per target
#   fuzz/run.sh 30 headers go_duration
#
# cargo-fuzz drives libFuzzer with nightly-only rustc flags (-Zsanitizer=address, coverage
# instrumentation); RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. cargo-fuzz itself is
# installed with `cargo install cargo-fuzz` when missing. The corpus grows in fuzz/corpus/<target>
# (seeded from fuzz/seeds/<target>); a crash leaves its input in fuzz/artifacts/<target>/ and makes
# this script exit 1 after the remaining targets ran. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...
# Environment: FUZZ_JOBS (parallel jobs per target, default 1), FUZZ_SANITIZER (address | none,
# default address), FUZZ_RSS_MB (libFuzzer's memory limit, default 2048), FUZZ_ARGS (more libFuzzer
# flags, e.g. "-fork=1 -ignore_crashes=1" to keep going past a known finding).
set -uo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(go_duration node_addr db_url parse_args mgmt_json headers request_path h1_head chunked)
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

sanitizer="${FUZZ_SANITIZER:-address}"
jobs="${FUZZ_JOBS:-1}"
rss="${FUZZ_RSS_MB:-2048}"
cargo fuzz build --sanitizer "$sanitizer" || exit 1
parallel=()
if [ "$jobs" -gt 1 ]; then
  parallel=("-jobs=$jobs" "-workers=$jobs")
fi

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  if [ -d "seeds/$t" ]; then
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  fi
  dict=()
  if [ -f "dicts/$t.dict" ]; then
    dict=("-dict=dicts/$t.dict")
  fi
  echo "== $t: ${seconds}s"
  start=$(date +%s)
  if cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb="$rss" "${parallel[@]}" \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 "${dict[@]}" ${FUZZ_ARGS:-} 2>"artifacts/$t.log"; then
    echo "   ok after $(( $(date +%s) - start ))s: $(grep -E '^stat::number_of_executed_units' "artifacts/$t.log" | tail -n1 | awk '{print $2}') runs, corpus $(ls "corpus/$t" | wc -l)"
  else
    echo "   FAILED: see fuzz/artifacts/$t.log and fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR|SUMMARY' "artifacts/$t.log" | head -n 5
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "targets with findings: ${failed[*]}"
  exit 1
fi
echo "all targets ran ${seconds}s without a finding"
