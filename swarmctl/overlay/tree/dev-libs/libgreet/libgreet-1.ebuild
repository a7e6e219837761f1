# build-swarm sample overlay (MIT)

EAPI=8

DESCRIPTION="Tiny C library: greet(name) builds a greeting"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	cat > greet.h <<-'END' || die
	#ifndef GREET_H
	#define GREET_H
	int greet(char *out, unsigned long size, const char *name);
	#endif
	END
	cat > greet.c <<-'END' || die
	#include <stdio.h>
	#include "greet.h"
	int greet(char *out, unsigned long size, const char *name) {
		return snprintf(out, size, "hello, %s", name);
	}
	END
	${CC:-gcc} ${CFLAGS} -c greet.c -o greet.o || die "compile failed"
	${AR:-ar} rcs libgreet.a greet.o || die "archive failed"
}

src_install() {
	insinto /usr/include
	doins greet.h
	insinto /usr/lib/libgreet
	doins libgreet.a
}
