# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="C program linked against libgreet; the built ELF is run as a check"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
DEPEND="dev-libs/libgreet"
RDEPEND="app-misc/greet-data"

src_compile() {
	cat > greeter.c <<-'END' || die
	#include <stdio.h>
	#include "greet.h"
	int main(int argc, char **argv) {
		char buf[128];
		greet(buf, sizeof buf, argc > 1 ? argv[1] : "swarm");
		puts(buf);
		return 0;
	}
	END
	${CC:-gcc} ${CFLAGS} -I"${ESYSROOT}/usr/include" greeter.c \
		"${ESYSROOT}/usr/lib/libgreet/libgreet.a" ${LDFLAGS} -o greeter || die "link failed"
	[[ "$(./greeter drone)" == "hello, drone" ]] || die "greeter ELF does not run"
}

src_install() {
	dobin greeter
}
