# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Build-time tool: stamps a file with a banner line"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	cat > swarm-stamp <<-'END' || die
	#!/bin/sh
	# swarm-stamp FILE TEXT: append a banner line to FILE
	printf '== %s ==\n' "$2" >> "$1"
	END
}

src_install() {
	dobin swarm-stamp
}
