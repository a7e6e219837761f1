#!/bin/bash
# "PID 1" of one test-bed host. Runs inside the host's network namespace, in fresh
# mount/UTS/PID namespaces (unshare --pid --fork --mount-proc), so everything it starts
# dies with it: SIGKILL on it is a power cut, SIGTERM is a clean shutdown.
#
# Usage: hostinit.sh NAME HOSTDIR
#   HOSTDIR holds etc.upper/, var.upper/ (the host's private, persistent changes to
#   /etc and /var), their overlay work dirs, sshd_config and the host key.
set -u
NAME=$1
HOSTDIR=$2

log() { printf '%s [%s] %s\n' "$(date +%T.%N | cut -c1-12)" "${NAME}" "$*" >>"${HOSTDIR}/console.log"; }

hostname "${NAME}"
# Private /etc and /var: the lower layer is the real one, changes go to the host's upper dir.
mount -t overlay overlay \
    -o "lowerdir=/etc,upperdir=${HOSTDIR}/etc.upper,workdir=${HOSTDIR}/etc.work" /etc || exit 1
mount -t overlay overlay \
    -o "lowerdir=/var,upperdir=${HOSTDIR}/var.upper,workdir=${HOSTDIR}/var.work" /var || exit 1
mount -t tmpfs -o mode=0755 tmpfs /run || exit 1
mkdir -p /run/sshd /run/lock
chmod 0755 /run/sshd
cat /proc/sys/kernel/random/uuid >/run/fake_boot_id
log "boot $(cat /run/fake_boot_id)"

/usr/sbin/sshd -f "${HOSTDIR}/sshd_config" -E "${HOSTDIR}/sshd.log" || log "sshd failed to start"

# Init scripts: Debian-style runlevel 2 links (update-rc.d, the sysvinit service module).
# /etc/rc?.d are empty opaque dirs in each host, so only what was enabled in the host runs.
started=()
for link in /etc/rc2.d/S*; do
    [[ -x "${link}" ]] || continue
    log "start ${link##*/}"
    "${link}" start >>"${HOSTDIR}/console.log" 2>&1 </dev/null || log "start ${link##*/} failed: $?"
    started+=("${link}")
done
touch /run/testbed.ready

shutdown() {
    log "shutdown"
    local i
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        [[ -x "${started[i]}" ]] && "${started[i]}" stop >>"${HOSTDIR}/console.log" 2>&1 </dev/null
    done
    exit 0
}
trap shutdown TERM INT
# Reap orphans (daemons re-parent to PID 1) while waiting for a signal.
while :; do
    sleep 3600 &
    wait $!
done
