#!/usr/bin/env bash
# Build cronie from Debian trixie's source package into a prefix (default /opt/cronie).
#
# Debian 12 ships no cronie (nor dcron) and trixie's binary needs a newer glibc, so the
# test bed and CI build it from source. The source is fetched with apt-get using a private
# sources list and private state/cache dirs: /etc/apt and the system's package lists stay
# untouched. Build dependencies come from the system's own apt (libpam0g-dev, autotools, a compiler).
#
# The daemon reads the real system paths (/etc/crontab, /etc/cron.d, /var/spool/cron), only
# the binaries live under the prefix.
#
# Usage: scripts/build-cronie.sh [PREFIX]
# Environment:
#   CRONIE_VERSION        upstream version wanted (default 1.7.2)
#   CRONIE_DEBIAN_MIRROR  Debian mirror URL (default: the first Debian URI of the system's apt config)
#   CRONIE_SUITE          suite to fetch the source from (default trixie)
#   CRONIE_FORCE=1        rebuild even when the prefix already holds the wanted version
#   CRONIE_NO_APT_INSTALL=1  do not apt-get install build dependencies
set -euo pipefail

PREFIX="${1:-${CRONIE_PREFIX:-/opt/cronie}}"
VERSION="${CRONIE_VERSION:-1.7.2}"
SUITE="${CRONIE_SUITE:-trixie}"
STAMP="${PREFIX}/.build-swarm-cronie"

log() { printf 'build-cronie: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${CRONIE_FORCE:-0}" != 1 && -x "${PREFIX}/sbin/crond" && -f "${STAMP}" ]] \
    && grep -qx "version=${VERSION}" "${STAMP}"; then
    log "cronie ${VERSION} already built in ${PREFIX}; nothing to do"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (installs build dependencies and writes ${PREFIX})"

find_mirror() {
    # The first plain Debian archive URI of the system's own apt configuration.
    local uri
    uri=$( (grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}';
            grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                | sed -E 's/\[[^]]*\]//' | awk '{print $2}') \
          | grep -E '/debian/?$' | grep -v security | head -n1 || true)
    [[ -n "${uri}" ]] || die "no Debian mirror found in /etc/apt; set CRONIE_DEBIAN_MIRROR"
    printf '%s\n' "${uri%/}"
}
MIRROR="${CRONIE_DEBIAN_MIRROR:-$(find_mirror)}"

if [[ "${CRONIE_NO_APT_INSTALL:-0}" != 1 ]]; then
    missing=()
    for pkg in libpam0g-dev build-essential dpkg-dev autoconf automake pkgconf; do
        dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'ok installed' || missing+=("${pkg}")
    done
    if ((${#missing[@]})); then
        log "installing build dependencies: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; }
    fi
fi

WORK=$(mktemp -d /tmp/build-cronie.XXXXXX)
trap 'rm -rf "${WORK}"' EXIT
mkdir -p "${WORK}/lists/partial" "${WORK}/cache/archives/partial" "${WORK}/parts" "${WORK}/src"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb-src [signed-by=%s] %s %s main\n' "${keyring}" "${MIRROR}" "${SUITE}" > "${WORK}/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=${WORK}/sources.list"
    -o "Dir::Etc::SourceParts=${WORK}/parts"
    -o "Dir::State::Lists=${WORK}/lists"
    -o "Dir::Cache=${WORK}/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
)

log "fetching cronie source from ${SUITE}"
apt-get "${APT_OPTS[@]}" -qq update >&2
(cd "${WORK}/src" && apt-get "${APT_OPTS[@]}" -qq source "cronie" >&2)

srcdir=$(find "${WORK}/src" -maxdepth 1 -mindepth 1 -type d -name 'cronie-*' | head -n1)
[[ -n "${srcdir}" ]] || die "apt-get source produced no cronie-* directory"
got="${srcdir##*/cronie-}"
[[ "${got}" == "${VERSION}" ]] || die "${SUITE} has cronie ${got}, wanted ${VERSION} (set CRONIE_VERSION)"

log "building cronie ${got} into ${PREFIX}"
cd "${srcdir}"
# Debian's patches touch Makefile.am/configure.ac: regenerate so the patched build files are used.
autoreconf -fi >"${WORK}/autoreconf.log" 2>&1 || { tail -n 30 "${WORK}/autoreconf.log" >&2; die "autoreconf failed"; }
# sysconfdir/localstatedir are the system's: the daemon must read /etc/cron.d like a real cronie.
./configure --prefix="${PREFIX}" --sysconfdir=/etc --localstatedir=/var \
    --without-selinux --without-audit --with-pam --with-inotify >"${WORK}/configure.log" 2>&1 \
    || { tail -n 30 "${WORK}/configure.log" >&2; die "configure failed"; }
make -j"$(nproc)" >"${WORK}/make.log" 2>&1 || { tail -n 30 "${WORK}/make.log" >&2; die "make failed"; }
# Install the binaries and man pages only; leave /etc alone (no pam.d, no sysconfig files).
make install-exec install-man >"${WORK}/install.log" 2>&1 \
    || { tail -n 30 "${WORK}/install.log" >&2; die "make install failed"; }

"${PREFIX}/sbin/crond" -V >/dev/null 2>&1 || die "built crond does not run"
printf 'version=%s\nsuite=%s\n' "${VERSION}" "${SUITE}" > "${STAMP}"
log "done: ${PREFIX}/sbin/crond, ${PREFIX}/bin/crontab, ${PREFIX}/bin/cronnext"
