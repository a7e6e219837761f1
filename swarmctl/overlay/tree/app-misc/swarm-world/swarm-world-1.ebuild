# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="The sample world: everything the demo site needs"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
RDEPEND="
	app-misc/banner
	app-misc/greeter
	app-misc/hello
"
PDEPEND="app-misc/hello-extras"

src_install() {
	insinto /usr/share/swarm-world
	echo "swarm world ${PV}" > "${T}/world.txt" || die
	doins "${T}/world.txt"
}
