# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Extras for hello (needs hello at run time)"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
RDEPEND="app-misc/hello"

src_compile() {
	echo "hello extras ${PV}" > extras.txt || die
}

src_install() {
	insinto /usr/share/hello
	doins extras.txt
}
