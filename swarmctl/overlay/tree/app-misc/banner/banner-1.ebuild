# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Text banner generated at build time with a build-only dependency"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
BDEPEND="dev-util/stamp"

src_compile() {
	"${BROOT}/usr/bin/swarm-stamp" banner.txt "banner ${PV}" || die "swarm-stamp missing"
}

src_install() {
	insinto /usr/share/banner
	doins banner.txt
}
