#!/usr/bin/env bash
# Prepare the SocketCAN test tier: host packages (qemu, static busybox, kmod, can-utils, iproute2)
# and a Debian kernel with its modules, extracted into the cache dir (default: <repo>/.vm-cache).
#
#   bash tools/vm/prepare.sh            # install what is missing, download the kernel once
#   EMSBMS_VM_CACHE=/path bash tools/vm/prepare.sh
#
# Idempotent: a second run does nothing but check. Needs root (apt-get) unless everything is there.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${EMSBMS_VM_CACHE:-$repo/.vm-cache}"
kernel_meta="${EMSBMS_VM_KERNEL_PACKAGE:-linux-image-amd64}"

say() { echo "prepare.sh: $*" >&2; }

need_tools() {
    # Debian package names of what is missing, space-separated
    local pkg missing=()
    for pkg in qemu-system-x86 busybox-static kmod can-utils iproute2; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    echo "${missing[@]:-}"
}

install_tools() {
    local missing
    missing="$(need_tools)"
    if [ -z "${missing// /}" ]; then
        say "host packages present"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "missing packages: $missing (run as root to install them)"
        exit 1
    fi
    say "installing: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
}

fetch_kernel() {
    local pkg version deb tmp
    pkg="$(apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
    if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
        apt-get update -q >/dev/null  # a fresh machine has no package lists yet
        pkg="$(apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
    fi
    if [ -z "$pkg" ]; then
        say "cannot resolve the kernel package $kernel_meta depends on (apt-get update?)"
        exit 1
    fi
    version="${pkg#linux-image-}"
    if [ -f "$cache/kernel/VERSION" ] && [ "$(cat "$cache/kernel/VERSION")" = "$version" ] \
        && [ -f "$cache/kernel/vmlinuz" ] && [ -f "$cache/kernel/lib/modules/$version/modules.dep" ]; then
        say "kernel $version already in $cache/kernel"
        return
    fi
    say "downloading $pkg"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    chmod 755 "$tmp"  # apt-get download drops privileges to _apt where it can
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
        apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
    }
    deb="$(ls "$tmp"/*.deb)"
    rm -rf "$cache/kernel.new"
    mkdir -p "$cache/kernel.new"
    dpkg-deb -x "$deb" "$cache/kernel.new/root"
    mv "$cache/kernel.new/root/boot/vmlinuz-$version" "$cache/kernel.new/vmlinuz"
    mkdir -p "$cache/kernel.new/lib/modules"
    mv "$cache/kernel.new/root/lib/modules/$version" "$cache/kernel.new/lib/modules/$version"
    rm -rf "$cache/kernel.new/root"
    depmod -b "$cache/kernel.new" "$version"
    echo "$version" > "$cache/kernel.new/VERSION"
    rm -rf "$cache/kernel"
    mv "$cache/kernel.new" "$cache/kernel"
    say "kernel $version ready in $cache/kernel"
}

install_tools
mkdir -p "$cache"
fetch_kernel
