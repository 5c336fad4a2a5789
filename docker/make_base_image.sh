#!/usr/bin/env bash
# Build a minimal Debian bookworm base image offline, for machines that cannot pull from a registry.
#
#   sudo docker/make_base_image.sh [--force] [--no-cache] [TAG]     # TAG defaults to hillclimb/base:bookworm
#
# debootstrap (variant minbase) fetches packages from the Debian mirror apt already uses, applies the
# bookworm-updates/-security fixes, trims docs and apt lists, and `docker import`s the tree. The rootfs
# tarball is cached in $HILLCLIMB_CACHE (default ~/.cache/hillclimb), keyed by package list and sources.
#   --force     re-import the image even if TAG exists (from the cached tarball when there is one)
#   --no-cache  debootstrap again instead of using the cached tarball
#
# Python: bookworm's python3 (3.11) plus python3-venv, whose ensurepip carries a bundled pip wheel, so
# `python3 -m venv` gives a working pip with no network. Debian's python3-pip would install into the
# system site-packages, which PEP 668 (EXTERNALLY-MANAGED) forbids without --break-system-packages.
set -euo pipefail

force=0 use_cache=1 tag=hillclimb/base:bookworm
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        --no-cache) use_cache=0 force=1 ;;
        -*) echo "usage: $0 [--force] [--no-cache] [TAG]" >&2; exit 2 ;;
        *) tag=$arg ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "make_base_image.sh: run as root (debootstrap needs it)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make_base_image.sh: no debootstrap; run .ci/docker_setup.sh" >&2; exit 1; }

if [[ $force -eq 0 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "make_base_image.sh: $tag exists (pass --force to rebuild)"; exit 0
fi

SUITE=bookworm
PACKAGES=python3,python3-venv,procps,iproute2
# The Debian repositories apt uses on this host, one "deb URI SUITE COMPONENT" line each.
sources=$(apt-get indextargets --format 'deb $(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' \
          | grep -E " $SUITE(-updates|-security)? main\$" | sort -u)
mirror=$(awk -v s="$SUITE" '$3 == s {print $2; exit}' <<<"$sources")
[[ -n $mirror ]] || { echo "make_base_image.sh: no '$SUITE main' source in apt's config" >&2; exit 1; }

cache=${HILLCLIMB_CACHE:-$HOME/.cache/hillclimb}
key=$(printf '%s\n%s\n' "$PACKAGES" "$sources" | sha256sum | cut -c1-12)
tarball=$cache/rootfs-$SUITE-minbase-$key.tar
mkdir -p "$cache/debs"

if [[ $use_cache -eq 0 || ! -f $tarball ]]; then
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'umount "$root/proc" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
    echo "make_base_image.sh: debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$cache/debs" "$SUITE" "$root" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }

    echo "$sources" >"$root/etc/apt/sources.list"
    mount -t proc proc "$root/proc"
    chroot "$root" sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get -y upgrade' \
        >>"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
    umount "$root/proc"

    # Keep docs out of anything installed later, as Debian's own slim images do.
    printf 'path-exclude /usr/share/%s/*\n' doc man info locale lintian >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc"
    chroot "$root" apt-get clean
    rm -rf "$root"/usr/share/{doc,man,info,locale,lintian}/* "$root"/var/lib/apt/lists/* \
        "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old "$root"/dev/*
    find "$root/var/log" -type f -delete
    : >"$root/etc/resolv.conf"; : >"$root/etc/hostname"     # debootstrap copies the host's

    tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
fi

old_id=$(docker image inspect "$tag" --format '{{.Id}}' 2>/dev/null || true)
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE $mirror" \
    "$tarball" "$tag" >/dev/null
# Drop the image this one replaced; it stays if containers or child images still use it.
[[ -z $old_id ]] || docker rmi "$old_id" >/dev/null 2>&1 || true
docker image ls "$tag" --format 'make_base_image.sh: built {{.Repository}}:{{.Tag}}, {{.Size}}'
