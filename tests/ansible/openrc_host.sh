#!/usr/bin/env bash
# Runs inside private mount and PID namespaces (tests/ansible/test_openrc.py): Debian's OpenRC
# over /usr, private /etc, /var and /run, then the swarm_unit role applied with
# swarm_unit_manager=openrc and the service driven through rc-service and a boot's `openrc default`.
# Prints "STEP name rc [detail]" lines for the test to read.
# Usage: PATTERN=... openrc_host.sh WORK OPENRC_TREE ANSIBLE_PLAYBOOK PLAYBOOK
# (PATTERN, the daemon's pgrep -f pattern, comes from the environment: in an argument it would
# match this script itself. It must not match supervise-daemon's own command line either, which
# holds the daemon's argv after a "--".)
set -u
W=$1 OPENRC=$2 PLAYBOOK_BIN=$3 PLAYBOOK=$4

step() { echo "STEP $1 $2 ${3:-}"; }
pid_of() { pgrep -f -- "${PATTERN}" | head -1; }

mount -t overlay overlay -o "lowerdir=${OPENRC}/usr:/usr" /usr || exit 1
mount -t tmpfs -o mode=0755 tmpfs /run || exit 1
for d in etc var; do
    mkdir -p "${W}/${d}.upper" "${W}/${d}.work"
    mount -t overlay overlay -o "lowerdir=/${d},upperdir=${W}/${d}.upper,workdir=${W}/${d}.work" "/${d}" || exit 1
done
cp -a "${OPENRC}/etc/rc.conf" "${OPENRC}/etc/runlevels" /etc/
touch /etc/insserv.conf
# What OpenRC's boot (openrc sysinit) leaves in its state dir.
fresh_run() {
    mkdir -p /run/openrc/{daemons,exclusive,failed,hotplugged,inactive,options,scheduled,started,starting,stopping,tmp,wasinactive}
    echo default > /run/openrc/softlevel
}
fresh_run
# The host's network service, which the swarm's services need.
printf '#!/sbin/openrc-run\ndescription="network (test)"\nstart() { return 0; }\n' > /etc/init.d/net
chmod 0755 /etc/init.d/net
/sbin/rc-update add net default >/dev/null

"${PLAYBOOK_BIN}" -i localhost, -c local "${PLAYBOOK}" > "${W}/converge.log" 2>&1
step converge $?
"${PLAYBOOK_BIN}" -i localhost, -c local "${PLAYBOOK}" > "${W}/converge2.log" 2>&1
step reconverge $? "$(grep -o 'changed=[0-9]*' "${W}/converge2.log" | head -1)"

/sbin/rc-service swarm-ortest status >/dev/null 2>&1
step status_running $?
first=$(pid_of)
step pid "${first:+0}" "${first}"
/sbin/rc-service swarm-ortest restart >/dev/null 2>&1
step restart $?
sleep 1
second=$(pid_of)
step restarted "$([ -n "${second}" ] && [ "${second}" != "${first}" ] && echo 0 || echo 1)" "${second}"
# supervise-daemon brings a crashed daemon back.
kill -KILL "${second}"
for _ in $(seq 50); do third=$(pid_of); [ -n "${third}" ] && [ "${third}" != "${second}" ] && break; sleep 0.2; done
step respawned "$([ -n "${third}" ] && [ "${third}" != "${second}" ] && echo 0 || echo 1)" "${third}"
/sbin/rc-service swarm-ortest stop >/dev/null 2>&1
step stop $?
sleep 0.5
step stopped "$([ -z "$(pid_of)" ] && echo 0 || echo 1)"
/sbin/rc-service swarm-ortest status >/dev/null 2>&1
step status_stopped $?
# A boot: OpenRC starts the default runlevel, where the role enabled the service.
umount /run && mount -t tmpfs -o mode=0755 tmpfs /run && fresh_run
/sbin/openrc default > "${W}/boot.log" 2>&1
step boot $?
for _ in $(seq 50); do [ -n "$(pid_of)" ] && break; sleep 0.2; done
step started_at_boot "$([ -n "$(pid_of)" ] && echo 0 || echo 1)"
/sbin/rc-service swarm-ortest stop >/dev/null 2>&1
