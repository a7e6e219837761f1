#!/usr/bin/env bash
# A host booted with OpenRC, inside private mount and PID namespaces (tests/ansible/test_openrc.py):
# Debian's OpenRC over /usr, private /etc, /var and /run, the network shared with the machine.
#
#   openrc_host.sh hold WORK OPENRC_TREE   set the host up, print READY, then hold it (it is PID 1
#                                          of the namespace) until stdin closes: everything in
#                                          the namespace dies with it.
#   openrc_host.sh boot                    (run inside, through nsenter) a power cycle: every process
#                                          but PID 1 killed, a fresh /run, then OpenRC's boot into
#                                          the default runlevel (`openrc default`).
set -u

# What OpenRC's boot (openrc sysinit) leaves in its state dir.
fresh_run() {
    mkdir -p /run/openrc/{daemons,exclusive,failed,hotplugged,inactive,options,scheduled,started,starting,stopping,tmp,wasinactive}
    echo default > /run/openrc/softlevel
}

case "$1" in
hold)
    W=$2 OPENRC=$3
    mount -t overlay overlay -o "lowerdir=${OPENRC}/usr:/usr" /usr || exit 1
    mount -t tmpfs -o mode=0755 tmpfs /run || exit 1
    for d in etc var; do
        mkdir -p "${W}/${d}.upper" "${W}/${d}.work"
        mount -t overlay overlay -o "lowerdir=/${d},upperdir=${W}/${d}.upper,workdir=${W}/${d}.work" "/${d}" || exit 1
    done
    cp -a "${OPENRC}/etc/rc.conf" "${OPENRC}/etc/runlevels" /etc/
    touch /etc/insserv.conf
    fresh_run
    # The host's network service, which the swarm's services need.
    printf '#!/sbin/openrc-run\ndescription="network (test)"\nstart() { return 0; }\n' > /etc/init.d/net
    chmod 0755 /etc/init.d/net
    /sbin/rc-update add net default >/dev/null || exit 1
    echo READY
    # PID 1 of the namespace, as init: reap every orphan (supervise-daemon's own process is one;
    # a zombie would still answer OpenRC's "is it alive") until the test closes stdin.
    exec python3 -c '
import os, sys, threading, time
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
'
    ;;
boot)
    kill -KILL -1 2>/dev/null  # every process of the namespace but PID 1 and this one
    sleep 0.2
    umount /run && mount -t tmpfs -o mode=0755 tmpfs /run || exit 1
    fresh_run
    exec /sbin/openrc default
    ;;
*)
    echo "usage: $0 hold WORK OPENRC_TREE | boot" >&2
    exit 2
    ;;
esac
