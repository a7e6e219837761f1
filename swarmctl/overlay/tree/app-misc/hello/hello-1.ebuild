# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Hello: the smallest real package"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	echo "hello ${PV}" > hello.txt || die
}

src_install() {
	insinto /usr/share/hello
	doins hello.txt
}
