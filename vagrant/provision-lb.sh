#!/usr/bin/env bash
# Provisions a load balancer VM (lb-1, lb-2): installs the stickylb binary built on the host,
# the demo configuration shared with `cargo xtask demo` and the systemd unit, then starts
# stickylb, or reloads it without downtime when it already runs. Idempotent.
#
#   STICKYLB_SRC=DIR  the repository root (default /vagrant, the synced folder)
#   ROOT=DIR          write the files under DIR instead of / and skip what acts on the running
#                     system (kernel check, apt-get, stickylb check, systemctl start/reload):
#                     a dry install into a tree, for tests
set -euo pipefail

readonly ROOT="${ROOT:-}"
readonly SRC="${STICKYLB_SRC:-/vagrant}"
readonly BINARY="$SRC/target/release/stickylb"
readonly CONFIG="$SRC/demo/stickylb.toml"
readonly UNIT="$SRC/dist/stickylb.service"

readonly BIN_DEST="$ROOT/usr/local/bin/stickylb"
readonly CONFIG_DEST="$ROOT/etc/stickylb/stickylb.toml"
readonly UNIT_DEST="$ROOT/etc/systemd/system/stickylb.service"

log() { printf 'provision-lb: %s\n' "$*"; }
die() {
    printf 'provision-lb: error: %s\n' "$*" >&2
    exit 1
}

live() { [[ -z "$ROOT" ]]; }

check_sources() {
    if [[ ! -f "$BINARY" ]]; then
        die "$BINARY not found.
Build stickylb on the host first, in the repository root:
    cargo xtask build --release
then copy it to the VMs and provision them again (from vagrant/):
    vagrant rsync lb-1 lb-2 && vagrant provision lb-1 lb-2"
    fi
    local file
    for file in "$CONFIG" "$UNIT"; do
        [[ -f "$file" ]] || die "$file not found: is $SRC the stickylb repository?"
    done
}

# Debian 12's kernel (6.1) has all of this; another box might not.
check_kernel() {
    local release major minor
    release="$(uname -r)"
    IFS=. read -r major minor _ <<<"$release"
    minor="${minor%%[!0-9]*}"
    if ((major < 5 || (major == 5 && minor < 15))); then
        die "kernel $release is too old: stickylb needs Linux >= 5.15 (use the debian/bookworm64 box)"
    fi
    [[ -e /sys/kernel/btf/vmlinux ]] ||
        die "kernel $release has no BTF (/sys/kernel/btf/vmlinux): stickylb needs CONFIG_DEBUG_INFO_BTF=y"
    grep -qw bpf /proc/filesystems ||
        die "kernel $release has no bpffs: stickylb pins its stick table there"
}

# bpftool to look at the pinned table, curl to try the frontend from inside.
install_packages() {
    local missing=()
    local pkg
    for pkg in bpftool curl; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# Installs $1 as $3 with mode $2 through a temporary file and a rename: the running daemon's
# executable can be replaced (writing into it would fail with "Text file busy"), and a reader
# never sees half a file. Prints the path when it changed.
install_file() {
    local src="$1" mode="$2" dest="$3" tmp
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    tmp="$(mktemp "$dest.XXXXXX")"
    install -m "$mode" "$src" "$tmp"
    mv -f "$tmp" "$dest"
    log "installed $dest"
}

# The binary was built on the host: make sure it runs here and accepts the configuration
# (the instance name is this VM's host name, which must be lb-1 or lb-2) before installing it.
check_binary() {
    local version
    version="$("$BINARY" --version 2>&1)" ||
        die "$BINARY does not run on this VM: $version
It was built on the host; build it on x86_64 Linux with a glibc not newer than Debian 12's
(2.36), e.g. on Debian 12, then: vagrant rsync lb-1 lb-2 && vagrant provision lb-1 lb-2"
    log "$version, instance name $(hostname)"
    "$BINARY" check --config "$CONFIG" ||
        die "stickylb check refused $CONFIG (see above)"
}

start_stickylb() {
    systemctl daemon-reload
    systemctl enable --quiet stickylb
    if systemctl is-active --quiet stickylb; then
        # Picks up a new binary and configuration without dropping a connection.
        log "stickylb runs: reloading"
        if ! systemctl reload stickylb; then
            # The table is in pinned BPF maps: a restart keeps it too.
            log "reload failed: restarting instead (the stick table is kept)"
            systemctl restart stickylb
        fi
    else
        log "starting stickylb"
        systemctl start stickylb
    fi
    systemctl --no-pager --lines=5 status stickylb || true
    systemctl is-active --quiet stickylb || die "stickylb is not running: journalctl -u stickylb"
    log "stickylb $(hostname) is up: frontend :80, monitor :8404/monitor, peers :1024"
}

main() {
    check_sources
    if live; then
        [[ $EUID -eq 0 ]] || die "run as root (Vagrant's shell provisioner does)"
        check_kernel
        install_packages
        check_binary
    else
        log "ROOT=$ROOT: installing files only"
    fi
    install_file "$BINARY" 0755 "$BIN_DEST"
    install_file "$CONFIG" 0644 "$CONFIG_DEST"
    install_file "$UNIT" 0644 "$UNIT_DEST"
    if live; then
        start_stickylb
    else
        # Offline enable: the multi-user.target.wants symlink, as on a VM.
        if command -v systemctl >/dev/null; then
            systemctl --root="$ROOT" enable stickylb.service
        fi
    fi
}

main "$@"
