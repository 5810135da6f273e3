#!/usr/bin/env bash
# x0tta6bl4 eBPF monitor setup (idempotent).
#
#  * installs Debian's bcc (python3-bpfcc, bpfcc-tools) and bpftool
#  * downloads the linux-headers package closest to `uname -r`, unpacks the
#    -common and -<flavour> parts into one merged tree under
#    $X0_EBPF_CACHE/kernel-headers/<version> (default /var/cache/x0tta6bl4)
#  * verifies that ebpf/monitor.bpf.c compiles against it (falls back to the
#    next-closest version if not) and writes the path to
#    $X0_EBPF_CACHE/bcc_kernel_source, which the loader reads
#  * mounts tracefs/debugfs if they are not mounted
#
# Never fails the caller: when not root or apt is unavailable it explains
# what is missing and exits 0 (the monitor then uses the /proc collector).
#
# Also installs nftables and iproute2 (the tests drop packets with nftables
# rules in network namespaces). A second run with nothing changed (same
# kernel, same monitor.bpf.c, headers still there) returns in well under a second.
#
# Env: X0_EBPF_CACHE (cache dir), X0_HEADERS_VERSION (force e.g. 6.1.0-47),
#      X0_SKIP_APT=1 (do not install packages), X0_EBPF_NO_VERIFY=1.
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${X0_EBPF_CACHE:-/var/cache/x0tta6bl4}"
HDR_ROOT="$CACHE/kernel-headers"
OUT_FILE="$CACHE/bcc_kernel_source"
say() { echo "[x0-ebpf-setup] $*"; }
# never fail the caller (make setup): an unexpected error is reported and ignored
trap 'rc=$?; [ "$rc" -ne 0 ] && say "setup stopped (rc $rc); the monitor will use the /proc + psutil collector"; exit 0' EXIT
skip() { say "$*"; say "eBPF telemetry not set up; the monitor will use the /proc + psutil collector."; exit 0; }

[ "$(id -u)" = "0" ] || skip "not root: re-run as root (sudo $0) to install bcc and kernel headers."
command -v apt-get >/dev/null 2>&1 || skip "apt-get not available (not a Debian-like system): install bcc and kernel headers manually and set BCC_KERNEL_SOURCE."

# ---------------------------------------------------------------- tracefs ---
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && say "mounted tracefs on /sys/kernel/tracing" \
        || say "WARNING: could not mount tracefs on /sys/kernel/tracing"
fi
if [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs nodev /sys/kernel/debug 2>/dev/null && say "mounted debugfs on /sys/kernel/debug" || true
fi

# --------------------------------------------------------------- packages ---
export DEBIAN_FRONTEND=noninteractive
need=()
for p in python3-bpfcc bpfcc-tools bpftool nftables iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ] && [ "${X0_SKIP_APT:-0}" != "1" ]; then
    say "installing ${need[*]}"
    if ! apt-get install -y --no-install-recommends "${need[@]}" >/tmp/x0-ebpf-apt.log 2>&1; then
        apt-get update >/dev/null 2>&1 || true
        apt-get install -y --no-install-recommends "${need[@]}" >/tmp/x0-ebpf-apt.log 2>&1 \
            || skip "apt-get install ${need[*]} failed (see /tmp/x0-ebpf-apt.log)."
    fi
fi
[ -d /usr/lib/python3/dist-packages/bcc ] || skip "python3-bpfcc is not installed."

# ------------------------------------------------------ quick second run ----
STAMP="$CACHE/.x0-verified"
fingerprint="$(uname -r) $(cat "$HERE/monitor.bpf.c" "$HERE/../libs/x0tta6bl4/monitoring/bpf_loader.py" 2>/dev/null | sha256sum | cut -c1-16)"
if [ -z "${X0_HEADERS_VERSION:-}" ] && [ -f "$STAMP" ] && [ -f "$OUT_FILE" ]; then
    prev="$(cat "$OUT_FILE")"
    if [ "$(cat "$STAMP")" = "$fingerprint $prev" ] && [ -f "$prev/.x0-complete" ]; then
        say "OK (unchanged): headers $prev"
        echo "BCC_KERNEL_SOURCE=$prev"
        exit 0
    fi
fi

# --------------------------------------------------------- header choice ----
REL="$(uname -r)"
ARCH="$(dpkg --print-architecture)"
case "$REL" in
    *cloud*) FLAVOUR="cloud-$ARCH" ;;
    *-rt*) FLAVOUR="rt-$ARCH" ;;
    *) FLAVOUR="$ARCH" ;;
esac

# If the running kernel is Debian's own, its exact headers package exists.
candidates=()
if [ -n "${X0_HEADERS_VERSION:-}" ]; then
    candidates=("$X0_HEADERS_VERSION")
elif apt-cache show "linux-headers-$REL" >/dev/null 2>&1; then
    candidates=("${REL%-$FLAVOUR}")
else
    list="$(apt-cache search --names-only "^linux-headers-[0-9].*-common\$" 2>/dev/null | awk '{print $1}')"
    if [ -z "$list" ]; then
        apt-get update >/dev/null 2>&1 || true
        list="$(apt-cache search --names-only "^linux-headers-[0-9].*-common\$" 2>/dev/null | awk '{print $1}')"
    fi
    [ -n "$list" ] || skip "no linux-headers-*-common packages visible to apt."
    # rank: distance of (major*1000+minor) to the running kernel, then prefer
    # versions <= running kernel, then newest
    mapfile -t candidates < <(echo "$list" | sed -e 's/^linux-headers-//' -e 's/-common$//' | awk -v rel="$REL" '
        { split(rel, r, /[.-]/); split($0, v, /[.+-]/);
          rk = r[1]*1000 + r[2]; vk = v[1]*1000 + v[2];
          d = rk - vk; below = (d >= 0) ? 0 : 1; if (d < 0) d = -d;
          # newest first within the same major.minor: sort key on the rest
          printf "%08d %d %s\n", d, below, $0 }' | sort -k1,1n -k2,2n -k3,3Vr | awk '{print $3}')
fi
[ "${#candidates[@]}" -gt 0 ] || skip "no kernel headers candidate for $REL."
say "running kernel $REL (flavour $FLAVOUR); header candidates: ${candidates[*]:0:4}"

PY=/usr/bin/python3
verify() {  # $1 = merged headers dir
    [ "${X0_EBPF_NO_VERIFY:-0}" = "1" ] && return 0
    X0_EBPF_DIR="$HERE" BCC_KERNEL_SOURCE="$1" timeout 120 "$PY" "$HERE/loader.py" check >/tmp/x0-ebpf-verify.log 2>&1
}

mkdir -p "$HDR_ROOT"
chosen=""
tried=0
for ver in "${candidates[@]}"; do
    [ "$tried" -ge 3 ] && break
    tried=$((tried + 1))
    dest="$HDR_ROOT/$ver-$FLAVOUR"
    if [ ! -f "$dest/.x0-complete" ]; then
        tmp="$(mktemp -d)"
        say "downloading linux-headers-$ver-common and linux-headers-$ver-$FLAVOUR"
        if ! (cd "$tmp" && apt-get download "linux-headers-$ver-common" "linux-headers-$ver-$FLAVOUR" >/dev/null 2>&1); then
            say "download of headers $ver failed"; rm -rf "$tmp"; continue
        fi
        mkdir -p "$tmp/x"
        for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
        rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
        # Debian splits arch-independent (-common) and generated (-flavour) trees;
        # bcc wants one tree: overlay flavour on common, drop kbuild symlinks
        cp -a "$tmp/x/usr/src/linux-headers-$ver-common/." "$dest.tmp/"
        cp -a "$tmp/x/usr/src/linux-headers-$ver-$FLAVOUR/." "$dest.tmp/"
        rm -f "$dest.tmp/scripts" "$dest.tmp/tools" "$dest.tmp/vmlinux"
        rm -rf "$tmp" "$dest" && mv "$dest.tmp" "$dest" && touch "$dest/.x0-complete"
    fi
    if verify "$dest"; then chosen="$dest"; break; fi
    say "monitor.bpf.c does not build against $ver (see /tmp/x0-ebpf-verify.log); trying next"
done
[ -n "$chosen" ] || skip "no headers version made the monitor program build."

echo "$chosen" > "$OUT_FILE.tmp" && mv "$OUT_FILE.tmp" "$OUT_FILE"
[ "${X0_EBPF_NO_VERIFY:-0}" = "1" ] || echo "$fingerprint $chosen" > "$STAMP"
say "OK: headers $chosen"
say "wrote $OUT_FILE (read by the loader); or export BCC_KERNEL_SOURCE=$chosen"
echo "BCC_KERNEL_SOURCE=$chosen"
