# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Message text the greeter prints"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	echo "build-swarm ${PV}" > message.txt || die
}

src_install() {
	insinto /usr/share/greet
	doins message.txt
}
