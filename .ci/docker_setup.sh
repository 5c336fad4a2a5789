#!/usr/bin/env bash
# Install Debian's Docker engine and start it with no networking at all, for the `docker` test marker.
#
#   sudo .ci/docker_setup.sh        # idempotent; leaves dockerd running in the background
#
# Works without systemd and on cgroup v1 or v2. The daemon gets --bridge=none --iptables=false, so no
# container can have a network interface besides `lo` and the host's iptables are left alone.
# Log: $HILLCLIMB_DOCKERD_LOG (default /var/log/hillclimb-dockerd.log).
set -euo pipefail

LOG=${HILLCLIMB_DOCKERD_LOG:-/var/log/hillclimb-dockerd.log}
TIMEOUT_S=${HILLCLIMB_DOCKERD_TIMEOUT_S:-60}

[[ $(id -u) -eq 0 ]] || { echo "docker_setup.sh: run as root" >&2; exit 1; }

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    # Keep the package's init script from starting a daemon with the default bridge and iptables rules.
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    trap '[[ $created_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io debootstrap cgroupfs-mount >/dev/null
fi

if docker info >/dev/null 2>&1; then
    echo "docker_setup.sh: a Docker daemon already answers"; exit 0
fi

# cgroup v2 shows cgroup.controllers; v1 shows one directory per controller. Mount v1 if neither is there.
[[ -e /sys/fs/cgroup/cgroup.controllers || -d /sys/fs/cgroup/memory ]] || cgroupfs-mount

echo "docker_setup.sh: starting dockerd (log: $LOG)"
nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --exec-opt native.cgroupdriver=cgroupfs >>"$LOG" 2>&1 </dev/null &

for _ in $(seq "$TIMEOUT_S"); do
    docker info >/dev/null 2>&1 && { docker info --format 'docker_setup.sh: ready: server {{.ServerVersion}},'\
' storage {{.Driver}}, cgroup v{{.CgroupVersion}} ({{.CgroupDriver}})'; exit 0; }
    sleep 1
done
echo "docker_setup.sh: dockerd did not answer within ${TIMEOUT_S}s; last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2
exit 1
