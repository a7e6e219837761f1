# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Deliberately failing package (not part of the sample world)"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	echo "this package fails on purpose" >&2
	die "broken on purpose"
}
