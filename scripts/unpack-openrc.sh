#!/usr/bin/env bash
# Unpack Debian's OpenRC (openrc, librc1, libeinfo1) into a directory, without installing it.
#
# Debian's openrc package conflicts with sysv-rc, so it cannot be installed beside the init
# system of a machine that others use; the OpenRC test mounts this tree over /usr in a private
# mount namespace instead (merged /usr: /sbin/openrc-run is DEST/usr/sbin/openrc-run there).
# The .debs are fetched with the system's apt-get download (no install, nothing else changed).
#
# Usage: scripts/unpack-openrc.sh [DEST]   (default /opt/openrc-debian; kept when already there)
set -euo pipefail

DEST="${1:-/opt/openrc-debian}"
if [[ -x "${DEST}/usr/sbin/openrc-run" && -f "${DEST}/.build-swarm-openrc" ]]; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
chmod 0777 "${work}"  # apt's sandbox user writes the downloads
(cd "${work}" && apt-get download -q openrc librc1 libeinfo1 >/dev/null)
mkdir -p "${work}/root"
for deb in "${work}"/*.deb; do
    dpkg-deb -x "${deb}" "${work}/root"
done
rm -rf "${DEST}.tmp"
mkdir -p "${DEST}.tmp/usr/sbin" "${DEST}.tmp/usr/bin" "${DEST}.tmp/usr/lib" "${DEST}.tmp/etc"
cp -a "${work}/root/sbin/." "${DEST}.tmp/usr/sbin/"
cp -a "${work}/root/bin/." "${DEST}.tmp/usr/bin/"
cp -a "${work}/root/lib/." "${DEST}.tmp/usr/lib/"
cp -a "${work}/root/etc/rc.conf" "${work}/root/etc/runlevels" "${DEST}.tmp/etc/"
echo "openrc=$(dpkg-deb -f "${work}"/openrc_*.deb Version)" > "${DEST}.tmp/.build-swarm-openrc"
rm -rf "${DEST}"
mv "${DEST}.tmp" "${DEST}"
