#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests, protocol tests of the shim binaries, and
# the end-to-end scenarios on a private containerd (reference Go shim and our shims), first on
# the system's containerd 1.6, then again on containerd 1.7 and 2.1 (Debian trixie's and forky's
# packages, fetched once into target/containerd-versions by scripts/fetch-containerd.sh).
#
# E2E_CONTAINERD_VERSIONS="1.7 2.1" (default) chooses the extra versions; empty skips them.
# Every version runs even when an earlier one failed; the script fails if any did.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
# The VM shim's guest image (kernel from apt, modules, the static agent) in target/guest, where
# the e2e vm variants look for it (E2E_VM_IMAGE elsewhere); rebuilt only when its inputs changed.
scripts/build-guest.sh
# The shims under test are the ones just built, never an older build of another profile.
export SHIM_BIN_DIR="$PWD/target/debug"
threads="${TEST_THREADS:-4}"
failed=()

echo "=== all tests; end-to-end scenarios on containerd 1.6 (the system's) ==="
start=$SECONDS
if ! E2E_CONTAINERD=1.6 cargo test --workspace --no-fail-fast -- --test-threads="$threads"; then
  failed+=("containerd 1.6 (whole workspace)")
fi
echo "=== containerd 1.6: $((SECONDS - start)) s ==="

# The end-to-end scenario binaries; the soak runs once, on 1.6 above.
e2e_targets=()
for f in tests/tests/*.rs; do
  name=$(basename "$f" .rs)
  case "$name" in soak) continue ;; esac
  e2e_targets+=(--test "$name")
done

# On the other versions the VM shim runs by path only: a VM boot per container is the costliest
# part of the suite, and finding a shim by name is covered by the other shims' name variants.
later_runtimes="${E2E_RUNTIMES:-runc-v2-reference,oci-runc-name,oci-runc-path,oci-crun-name,oci-crun-path,process-name,process-path,vm-path}"

for v in ${E2E_CONTAINERD_VERSIONS-1.7 2.1}; do
  echo "=== end-to-end scenarios on containerd $v (E2E_CONTAINERD=$v) ==="
  start=$SECONDS
  if ! E2E_CONTAINERD="$v" E2E_RUNTIMES="$later_runtimes" \
      cargo test -p shim-e2e --no-fail-fast "${e2e_targets[@]}" \
      -- --test-threads="$threads"; then
    failed+=("containerd $v (end-to-end)")
  fi
  echo "=== containerd $v: $((SECONDS - start)) s ==="
done

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all tests passed"
