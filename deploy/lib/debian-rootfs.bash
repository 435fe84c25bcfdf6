# A Debian root filesystem made with debootstrap from Debian's packages (no container
# registry is reachable from CI), cached under a directory keyed by what went into it.
# Sourced by deploy/image/build and tests/systemd/smoke.

# The Debian mirror apt is configured with (deb822 or one-line sources).
apt_mirror() {
    local uri
    uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -v -- '-security' \
        | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1; exit}')
    echo "${uri:-http://deb.debian.org/debian}"
}

# debian_rootfs CACHE_DIR SUITE PACKAGES [CUSTOMIZE]: prints the path of a rootfs of
# SUITE (minbase) with the comma-separated PACKAGES, made once and then reused.
# CUSTOMIZE, a function name, is called with the fresh tree's path before it is
# published; its text is part of the cache key, so changing it makes a new tree.
debian_rootfs() {
    local cache_dir=$1 suite=$2 packages=$3 customize=${4:-}
    local stamp rootfs tmp
    stamp=$({ printf '%s %s' "$suite" "$packages"; [[ -z $customize ]] || declare -f "$customize"; } \
        | sha256sum | cut -c1-12)
    rootfs=$cache_dir/rootfs-$stamp
    if [[ ! -e $rootfs/.complete ]]; then
        tmp=$rootfs.tmp.$$
        rm -rf "$tmp"
        mkdir -p "$cache_dir"
        printf '== debootstrap %s into %s (cached for later runs)\n' "$suite" "$rootfs" >&2
        if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$(apt_mirror)" \
            >"$cache_dir/debootstrap.log" 2>&1; then
            tail -n 30 "$cache_dir/debootstrap.log" >&2
            rm -rf "$tmp"
            echo "debootstrap failed (log: $cache_dir/debootstrap.log)" >&2
            return 1
        fi
        # Called plainly, not in an `||` list, so that errexit stops it at its first
        # failing command (a failed tree stays as rootfs-*.tmp.PID, never published).
        # It still sees the archive's Release file in /var/lib/apt/lists.
        if [[ -n $customize ]]; then
            "$customize" "$tmp"
        fi
        # No package lists, apt caches or downloaded .debs: they only take space.
        rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb
        touch "$tmp/.complete"
        # Another run may have finished first: then keep its copy.
        mv -T "$tmp" "$rootfs" 2>/dev/null || rm -rf "$tmp"
    fi
    echo "$rootfs"
}
