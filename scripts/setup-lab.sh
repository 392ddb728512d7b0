#!/usr/bin/env bash
# Install and start what the simulated lab of the tests needs, when it is missing:
# Docker engine, sshd, debootstrap, iproute2, iptables, Slurm and munge; this machine's dockerd;
# the base images.
# Safe to run again. Needs root (the lab makes network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup-lab: the simulated lab needs root (network namespaces, dockerd)" >&2
    exit 2
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v nsenter >/dev/null || need+=(util-linux)
# A Slurm cluster on the lab's hosts (tests/simslurm.py): controller, node daemons, clients, munge.
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
dpkg -s slurm-wlm-basic-plugins >/dev/null 2>&1 || need+=(slurm-wlm-basic-plugins)
command -v munged >/dev/null || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting this machine's dockerd (log: /var/log/launch-dockerd.log)"
    setsid dockerd >>/var/log/launch-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "setup-lab: dockerd did not start; see /var/log/launch-dockerd.log" >&2; exit 1; }
fi

say "the lab's base image, PyTorch for CPUs (built once, then cached)"
start=$(date +%s)
tag=$(REQUIREMENTS=tests/lab-base/requirements.txt REPO=launch-lab-base images/build-cpu-base.sh | tail -n 1)
echo "lab base image: $tag ($(( $(date +%s) - start )) s)"

say "the project's CPU base image, PyTorch and torchvision (built once, then cached)"
start=$(date +%s)
tag=$(images/build-cpu-base.sh | tail -n 1)
echo "CPU base image: $tag ($(( $(date +%s) - start )) s)"
