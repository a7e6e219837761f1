#!/bin/bash
# Keeps one test-bed host "powered": starts its PID 1 (hostinit.sh) in the host's network
# namespace and starts it again RESTART_DELAY seconds after it dies (a reboot). Exits
# when HOSTDIR/halt exists. Runs in its own session so teardown can kill the whole group.
#
# Usage: supervisor.sh NETNS NAME HOSTDIR HOSTINIT [RESTART_DELAY]
set -u
NETNS=$1
NAME=$2
HOSTDIR=$3
HOSTINIT=$4
DELAY=${5:-3}

child=
trap '[[ -n "${child}" ]] && kill -KILL "${child}" 2>/dev/null; exit 0' TERM INT
while [[ ! -e "${HOSTDIR}/halt" ]]; do
    ip netns exec "${NETNS}" unshare --kill-child --mount --uts --pid --fork --mount-proc \
        --propagation private "${HOSTINIT}" "${NAME}" "${HOSTDIR}" &
    child=$!
    wait "${child}"
    child=
    [[ -e "${HOSTDIR}/halt" ]] && break
    echo "$(date +%s) power off; restart in ${DELAY}s" >>"${HOSTDIR}/console.log"
    sleep "${DELAY}" &
    wait $!
done
