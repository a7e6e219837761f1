"""The binhost's signing key: where it lives, how packages are signed, how they are checked.

Trust model (docs/security.md): drones never hold a key. The binhost signs a package
only after it has verified the upload (size, SHA-256, gpkg Manifest, CPV), so a
compromised drone cannot produce a package a client trusts without passing those
checks. Clients trust the public keys the binhost publishes in ``PKGDIR/KEYS.asc``.

* :class:`Keyring` is the binhost's GnuPG home (owned by the binhost's user, 0700):
  key creation (ed25519, with an expiry; GnuPG writes the revocation certificate
  aside in ``openpgp-revocs.d``), rotation, revocation, retirement, export.
* :func:`sign_gpkg` signs a package in place with portage's own
  ``gpkg.update_signature()`` -- what ``gpkg-sign`` does -- so the signature format is
  exactly the one portage verifies (detached ``.sig`` per member, clearsigned Manifest).
* :class:`VerifyKeyring` builds a throw-away verification keyring from published keys
  and :func:`verify_gpkg` lets portage's own reader verify a package against it, as a
  default client would (signature required).

GnuPG runs with ``--batch``. The key is protected by the home's ownership and mode and,
with ``binhost.key_passphrase_file``, by a passphrase gpg reads from that file (mode
0600, checked before every use; never on a command line). No secret material is ever
logged: command output is reduced to one line without key material before it reaches
a message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmctl.atomicfile import write_atomic
from swarmctl.exceptions import SwarmError

logger = logging.getLogger("swarmctl.binhost.signing")

#: Public keys clients should trust, next to ``Packages``.
KEYS_NAME = "KEYS.asc"
#: Digest portage signs with by default (make.globals BINPKG_GPG_SIGNING_DIGEST).
SIGNING_DIGEST = "SHA512"
#: portage's default verify command (make.globals BINPKG_GPG_VERIFY_BASE_COMMAND), gpg binary aside.
_VERIFY_ARGS = "--verify --batch --no-tty --no-auto-check-trustdb --status-fd 2 [PORTAGE_CONFIG] [SIGNATURE]"
_GPG_TIMEOUT = 120.0
_OPTIONS_WITH_VALUE = ("--passphrase", "--passphrase-file", "--pinentry-mode", "--export-options")
DAY = 86400
#: Longest GnuPG home whose agent sockets (``S.gpg-agent.browser``) fit a Unix socket name.
MAX_HOME_CHARS = 87


class SigningError(SwarmError):
    """The key cannot be created, used or changed."""


class NoSigningKey(SigningError):
    """The binhost has no usable signing key (none, expired or revoked): it must not publish."""


class SignatureInvalid(SwarmError):
    """A package is unsigned, signed by a key that is not trusted, or altered after signing."""


@dataclass(frozen=True)
class KeyInfo:
    """One OpenPGP key in a keyring.

    Attributes:
        fingerprint: 40 hex digits.
        created: Creation time (seconds since the epoch).
        expires: Expiry time, None when it never expires.
        revoked: A revocation is recorded for it.
        secret: The secret key is in this keyring (the binhost can sign with it).
        uid: Its first user id.
    """

    fingerprint: str
    created: int
    expires: int | None
    revoked: bool
    secret: bool
    uid: str

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def usable(self, now: float | None = None) -> bool:
        """Can sign now: secret present, not revoked, not expired."""
        return self.secret and not self.revoked and not self.expired(now)

    def days_left(self, now: float | None = None) -> float | None:
        if self.expires is None:
            return None
        return (self.expires - (time.time() if now is None else now)) / DAY

    def status(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        if self.expired(now):
            return "expired"
        return "active" if self.secret else "public only"


def _run_gpg(gpg: str, home: Path, args: list[str], *, stdin: bytes | None = None,
             check: bool = True) -> subprocess.CompletedProcess[bytes]:
    command = [gpg, "--homedir", str(home), "--batch", "--no-tty", *args]
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, timeout=_GPG_TIMEOUT, check=False,
                              env=_gpg_env(home))
    except FileNotFoundError:
        raise SigningError(f"{gpg} not found: install GnuPG (apt-get install gnupg)") from None
    except subprocess.TimeoutExpired:
        raise SigningError(f"gpg {args[0]} timed out after {_GPG_TIMEOUT:.0f} s") from None
    if check and done.returncode != 0:
        what = next((a for a in args if a.startswith("--") and a not in _OPTIONS_WITH_VALUE
                     and a not in ("--yes", "--armor")), args[0])
        raise SigningError(f"gpg {what} failed (exit {done.returncode}): {_last_line(done.stderr)}")
    return done


def _gpg_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPG_", "GNUPG"))}
    env["GNUPGHOME"] = str(home)
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def _last_line(stderr: bytes) -> str:
    """The last informative gpg line (never key material: gpg prints none on stderr)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()
             if line.strip() and "-----" not in line]
    return lines[-1][:300] if lines else "no output"


def parse_keys(colons: str, secret_fprs: set[str]) -> list[KeyInfo]:
    """KeyInfo for each primary key in ``gpg --with-colons --list-keys`` output."""
    keys: list[KeyInfo] = []
    current: dict[str, Any] | None = None

    def flush() -> None:
        if current and current.get("fpr"):
            keys.append(KeyInfo(fingerprint=current["fpr"], created=current["created"],
                                expires=current["expires"], revoked=current["revoked"],
                                secret=current["fpr"] in secret_fprs, uid=current.get("uid", "")))

    for line in colons.splitlines():
        fields = line.split(":")
        kind = fields[0]
        if kind in ("pub", "sec"):
            flush()
            current = {"created": int(fields[5] or 0), "expires": int(fields[6]) if fields[6] else None,
                       "revoked": fields[1] == "r"}
        elif current is not None and kind == "fpr" and "fpr" not in current:
            current["fpr"] = fields[9]
        elif current is not None and kind == "uid" and "uid" not in current:
            current["uid"] = fields[9]
    flush()
    return keys


class Keyring:
    """The binhost's GnuPG home: the signing key(s) and the public keys it publishes."""

    def __init__(self, home: Path, gpg: str = "gpg", passphrase_file: Path | None = None) -> None:
        """Args:
            home: The GnuPG home.
            gpg: The gpg program.
            passphrase_file: The keys' passphrase, in a file only the binhost's user can
                read; gpg reads it (the passphrase is never on a command line or in a log).
                None: keys without a passphrase.
        """
        self.home = Path(home).absolute()
        self.gpg = gpg
        self.passphrase_file = Path(passphrase_file).absolute() if passphrase_file else None

    def passphrase_args(self) -> list[str]:
        """gpg options that unlock the secret key without a prompt."""
        source = ["--passphrase-file", str(self.passphrase_file)] if self.passphrase_file else ["--passphrase", ""]
        return ["--pinentry-mode", "loopback", *source]

    def check_passphrase_file(self) -> str | None:
        """A problem with the passphrase file (missing, empty, readable by others), or None."""
        if self.passphrase_file is None:
            return None
        try:
            st = self.passphrase_file.stat()
        except OSError as exc:
            return f"passphrase file {self.passphrase_file}: {exc.strerror or exc}"
        if st.st_uid != os.getuid():
            return f"passphrase file {self.passphrase_file} belongs to uid {st.st_uid}, not uid {os.getuid()}"
        if stat.S_IMODE(st.st_mode) & 0o077:
            return f"passphrase file {self.passphrase_file} is mode {stat.S_IMODE(st.st_mode):o}, must be 600"
        if st.st_size == 0:
            return f"passphrase file {self.passphrase_file} is empty"
        return None

    # -- the home ------------------------------------------------------------------

    def ensure_home(self) -> None:
        """Create the home 0700; refuse one another user owns or others can read."""
        if len(str(self.home)) > MAX_HOME_CHARS:
            raise SigningError(str(self.check_home()))
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = self.home.stat()
        if st.st_uid != os.getuid():
            raise SigningError(f"{self.home} belongs to uid {st.st_uid}, not to the binhost's user "
                               f"(uid {os.getuid()})")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.home, 0o700)

    def check_home(self) -> str | None:
        """A problem with the home's ownership, mode or path length, or None."""
        if len(str(self.home)) > MAX_HOME_CHARS:
            return (f"{self.home} is too long for gpg-agent's socket names ({len(str(self.home))} > "
                    f"{MAX_HOME_CHARS} characters): choose a shorter binhost.gnupg_home")
        try:
            st = self.home.stat()
        except FileNotFoundError:
            return f"{self.home} does not exist"
        if st.st_uid != os.getuid():
            return f"{self.home} belongs to uid {st.st_uid}, not uid {os.getuid()}"
        if stat.S_IMODE(st.st_mode) & 0o077:
            return f"{self.home} is mode {stat.S_IMODE(st.st_mode):o}, must be 700"
        return None

    def stop_agent(self) -> None:
        """Stop the gpg-agent GnuPG started for this home (tests, key changes)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True,
                           timeout=30, check=False, env=_gpg_env(self.home))

    # -- keys ----------------------------------------------------------------------

    def list_keys(self) -> list[KeyInfo]:
        """Every key in the home, oldest first (an absent home has none)."""
        if not self.home.is_dir():
            return []
        secret = _run_gpg(self.gpg, self.home, ["--with-colons", "--fixed-list-mode", "--list-secret-keys"],
                          check=False)
        secret_fprs = {info.fingerprint for info in parse_keys(secret.stdout.decode("utf-8", "replace"), set())}
        public = _run_gpg(self.gpg, self.home, ["--with-colons", "--fixed-list-mode", "--list-keys"],
                          check=False)
        return sorted(parse_keys(public.stdout.decode("utf-8", "replace"), secret_fprs),
                      key=lambda k: (k.created, k.fingerprint))

    def signing_key(self, now: float | None = None) -> KeyInfo:
        """The key that signs from now on: the newest usable one.

        Raises:
            NoSigningKey: None is usable (with the reason in one line).
        """
        problem = self.check_home()
        if problem and self.home.exists():
            raise NoSigningKey(f"signing key unusable: {problem}")
        problem = self.check_passphrase_file()
        if problem:
            raise NoSigningKey(f"signing key unusable: {problem}")
        keys = self.list_keys()
        usable = [key for key in keys if key.usable(now)]
        if usable:
            return usable[-1]
        if not keys:
            raise NoSigningKey(f"no signing key in {self.home}: run 'swarmctl binhost key init'")
        states = ", ".join(f"{k.fingerprint[-16:]} {k.status(now)}" for k in keys)
        raise NoSigningKey(f"no usable signing key in {self.home} ({states}): run 'swarmctl binhost key rotate'")

    def find(self, fingerprint: str) -> KeyInfo:
        wanted = fingerprint.replace(" ", "").upper()
        matches = [k for k in self.list_keys() if k.fingerprint == wanted or
                   (len(wanted) >= 16 and k.fingerprint.endswith(wanted))]
        if len(matches) != 1:
            raise SigningError(f"no key {fingerprint} in {self.home}" if not matches else
                               f"{fingerprint} matches several keys; give the full fingerprint")
        return matches[0]

    def create(self, uid: str, expiry_days: int) -> KeyInfo:
        """Generate a new ed25519 signing key (with the passphrase file's passphrase, if
        one is set) expiring in ``expiry_days``."""
        if expiry_days <= 0:
            raise SigningError("key expiry must be a positive number of days")
        problem = self.check_passphrase_file()
        if problem:
            raise SigningError(problem)
        self.ensure_home()
        before = {k.fingerprint for k in self.list_keys()}
        # --yes: a rotation makes a second key with the same user id.
        _run_gpg(self.gpg, self.home, ["--yes", *self.passphrase_args(),
                                       "--quick-gen-key", uid, "ed25519", "sign", f"{expiry_days}d"])
        created = [k for k in self.list_keys() if k.fingerprint not in before]
        if len(created) != 1:
            raise SigningError("gpg did not create exactly one key")
        key = created[0]
        with contextlib.suppress(OSError):
            os.chmod(self.revocation_path(key.fingerprint), 0o600)
        logger.info("created binhost signing key %s", key.fingerprint)
        return key

    def init(self, uid: str, expiry_days: int) -> KeyInfo:
        """The first key. Refused if a usable one exists (use :meth:`create` via rotate)."""
        with contextlib.suppress(NoSigningKey):
            existing = self.signing_key()
            raise SigningError(f"{self.home} already has signing key {existing.fingerprint}; "
                               "use 'swarmctl binhost key rotate' for a new one")
        return self.create(uid, expiry_days)

    def revocation_path(self, fingerprint: str) -> Path:
        """Where GnuPG wrote the key's revocation certificate at creation."""
        return self.home / "openpgp-revocs.d" / f"{fingerprint}.rev"

    def revoke(self, fingerprint: str) -> KeyInfo:
        """Apply the key's revocation certificate and delete its secret key.

        The revoked public key stays in ``KEYS.asc`` so clients importing it learn of
        the revocation; packages it signed no longer verify.
        """
        key = self.find(fingerprint)
        if not key.revoked:
            cert_path = self.revocation_path(key.fingerprint)
            try:
                text = cert_path.read_text(encoding="utf-8")
            except OSError:
                raise SigningError(f"no revocation certificate for {key.fingerprint} at {cert_path}") from None
            # GnuPG prefixes the armor line with ':' so the certificate cannot be imported by accident.
            cert = text.replace(":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----")
            _run_gpg(self.gpg, self.home, ["--import"], stdin=cert.encode())
        if key.secret:
            self._delete_secret(key.fingerprint)
        logger.info("revoked binhost signing key %s", key.fingerprint)
        return self.find(key.fingerprint)

    def retire(self, fingerprint: str) -> None:
        """Remove a key entirely (end of a rotation overlap): clients stop trusting it."""
        key = self.find(fingerprint)
        if key.secret:
            self._delete_secret(key.fingerprint)
        _run_gpg(self.gpg, self.home, ["--yes", "--delete-keys", key.fingerprint])
        logger.info("retired binhost signing key %s", key.fingerprint)

    def _delete_secret(self, fingerprint: str) -> None:
        _run_gpg(self.gpg, self.home, ["--yes", *self.passphrase_args(), "--delete-secret-keys", fingerprint])

    def export(self) -> str:
        """Every public key in the home, armored (revoked ones carry their revocation)."""
        if not self.list_keys():
            return ""
        return _run_gpg(self.gpg, self.home, ["--armor", "--export-options", "export-minimal",
                                              "--export"]).stdout.decode("ascii")

    def publish(self, pkgdir: Path) -> Path:
        """Write ``PKGDIR/KEYS.asc`` (atomically) with every public key to trust."""
        path = Path(pkgdir) / KEYS_NAME
        text = self.export()
        if not text:
            raise NoSigningKey(f"no keys in {self.home} to publish")
        Path(pkgdir).mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        return path


# -- signing with portage --------------------------------------------------------------

class _PortageSettings(dict):  # type: ignore[type-arg]
    """The part of ``portage.config`` that portage's gpkg code reads, and nothing else."""

    def __init__(self, features: set[str], env: dict[str, str], **values: str) -> None:
        super().__init__(values)
        self.features = frozenset(features)
        self._env = env

    def environ(self) -> dict[str, str]:
        return dict(self._env)


def sign_gpkg(path: Path, keyring: Keyring, key: KeyInfo | None = None) -> KeyInfo:
    """Sign ``path`` in place with portage's ``gpkg.update_signature()`` (as gpkg-sign does).

    Existing signatures are replaced. The file is rewritten through a temp file in
    its own directory and renamed over, so it is either the old or the signed one.

    Returns:
        The key that signed.

    Raises:
        NoSigningKey: No usable key.
        SigningError: Portage or gpg failed.
        OSError: Reading or writing the package failed (e.g. ENOSPC).
    """
    from portage.gpkg import gpkg

    key = key or keyring.signing_key()
    settings = _PortageSettings(
        {"binpkg-signing"}, _gpg_env(keyring.home),
        BINPKG_GPG_SIGNING_BASE_COMMAND=" ".join(
            [shlex.quote(keyring.gpg), "--batch", "--no-tty", "--sign", "--armor",
             *map(shlex.quote, keyring.passphrase_args()), "[PORTAGE_CONFIG]"]),
        BINPKG_GPG_SIGNING_DIGEST=SIGNING_DIGEST,
        BINPKG_GPG_SIGNING_GPG_HOME=str(keyring.home),
        BINPKG_GPG_SIGNING_KEY=key.fingerprint,
        # Re-signing checks the old signature first: only the binhost's own keys pass.
        BINPKG_GPG_VERIFY_BASE_COMMAND=f"{keyring.gpg} {_VERIFY_ARGS}",
        BINPKG_GPG_VERIFY_GPG_HOME=str(keyring.home),
        GPG_VERIFY_USER_DROP="", GPG_VERIFY_GROUP_DROP="",
        MAKEOPTS="-j1",
    )
    package = gpkg(settings, None, str(path))
    try:
        package.update_signature(keep_current_signature=False)
    except OSError:
        raise  # an I/O error (a full disk), not a signing problem: the caller tells them apart
    except Exception as exc:  # portage raises GPGException, DigestException, OSError...
        raise SigningError(f"signing {Path(path).name} failed: {' '.join(str(exc).split())[:300]}") from None
    return key


def signature_present(path: Path) -> bool:
    """Whether a gpkg carries any signature (a ``.sig`` member or a clearsigned Manifest)."""
    import tarfile

    try:
        with tarfile.open(path, "r:") as container:
            for member in container.getmembers():
                if member.name.endswith(".sig"):
                    return True
                if member.name.endswith("/Manifest") and member.isfile():
                    handle = container.extractfile(member)
                    if handle is not None and b"-----BEGIN PGP SIGNATURE-----" in handle.read(1024 * 1024):
                        return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


# -- verifying like a default client ---------------------------------------------------

class VerifyKeyring:
    """A temporary verification keyring holding published keys, every one fully trusted.

    What a client's ``/etc/portage/gnupg`` holds after the swarm_client role ran;
    used by ``swarmctl binhost verify`` and ``reindex``. A context manager: the home
    is removed on exit.
    """

    def __init__(self, keys_asc: str, gpg: str = "gpg") -> None:
        self.gpg = gpg
        # Short: gpg-agent socket paths are capped (a deep TMPDIR breaks gpg).
        self._dir = Path(tempfile.mkdtemp(prefix="swarm-verify-", dir="/tmp"))
        self.home = self._dir / "gnupg"
        self.home.mkdir(mode=0o700)
        self.fingerprints: list[str] = []
        if keys_asc.strip():
            _run_gpg(gpg, self.home, ["--import"], stdin=keys_asc.encode())
            self.fingerprints = [k.fingerprint for k in Keyring(self.home, gpg).list_keys()]
            trust = "".join(f"{fpr}:6:\n" for fpr in self.fingerprints)
            _run_gpg(gpg, self.home, ["--import-ownertrust"], stdin=trust.encode())
            _run_gpg(gpg, self.home, ["--check-trustdb"], check=False)

    @classmethod
    def from_pkgdir(cls, pkgdir: Path, gpg: str = "gpg") -> VerifyKeyring:
        """From ``PKGDIR/KEYS.asc`` (an empty keyring when there is none: nothing verifies)."""
        try:
            text = (Path(pkgdir) / KEYS_NAME).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            text = ""
        return cls(text, gpg)

    def settings(self) -> _PortageSettings:
        """Settings making portage's gpkg reader verify as a default client does."""
        return _PortageSettings(
            {"binpkg-request-signature"}, _gpg_env(self.home),
            BINPKG_GPG_VERIFY_BASE_COMMAND=f"{self.gpg} {_VERIFY_ARGS}",
            BINPKG_GPG_VERIFY_GPG_HOME=str(self.home),
            # Our own private keyring: no need to drop to nobody as a client's root does.
            GPG_VERIFY_USER_DROP="", GPG_VERIFY_GROUP_DROP="",
            MAKEOPTS="-j1",
        )

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True,
                           timeout=30, check=False)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> VerifyKeyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_gpkg(path: Path, keyring: VerifyKeyring) -> None:
    """Portage's own verification of ``path``: signature required, trusted key, Manifest intact.

    Raises:
        SignatureInvalid: Unsigned, unknown or untrusted or revoked key, bad signature,
            or a member that does not match the signed Manifest.
    """
    from portage.gpkg import gpkg

    package = gpkg(keyring.settings(), None, str(path))
    try:
        # Portage prints a coloured report of each failure on stderr; the exception says it in one line.
        with contextlib.redirect_stderr(io.StringIO()):
            package._verify_binpkg()
    except Exception as exc:  # MissingSignature, InvalidSignature, DigestException...
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise SignatureInvalid(f"{Path(path).name}: {type(exc).__name__}: "
                               f"{text.replace(str(path), Path(path).name)[:300]}") from None


@contextlib.contextmanager
def verifying(pkgdir: Path, gpg: str = "gpg") -> Iterator[VerifyKeyring]:
    """``with verifying(pkgdir) as keyring: verify_gpkg(path, keyring)``."""
    keyring = VerifyKeyring.from_pkgdir(pkgdir, gpg)
    try:
        yield keyring
    finally:
        keyring.close()


# -- a client's verification keyring ---------------------------------------------------

#: Copy of the keys a client keyring was built from (re-running with the same keys is a no-op).
CLIENT_KEYS_COPY = "swarm-KEYS.asc"
_ANCHOR_UID = "build-swarm local trust anchor <anchor@build-swarm.invalid>"


def install_client_keyring(home: Path, keys_asc: str, gpg: str = "gpg", *,
                           nobody_readable: bool = True) -> bool:
    """Make ``home`` a portage verification keyring that trusts exactly ``keys_asc``'s keys.

    As Gentoo's getuto does for Gentoo's keys: a local, ultimately trusted anchor key
    locally signs (``lsign``) every published key, so they are valid (portage wants
    TRUST_FULLY or TRUST_ULTIMATE). The keyring is built in a short private temp home
    (gpg-agent's socket names must stay short) and only the public keyring and trust
    database are installed: the anchor's secret never reaches ``home``. Keys no longer
    published are gone after the next run; revoked ones are imported (not signed) so
    their revocation applies.

    Args:
        home: The keyring directory (a client's ``/etc/portage/gnupg``).
        keys_asc: The binhost's ``KEYS.asc``.
        gpg: The gpg program.
        nobody_readable: Let nobody:nogroup read it (portage verifies as nobody when
            run as root); otherwise it stays private to its owner.

    Returns:
        True if the keyring changed.

    Raises:
        SigningError: No key in ``keys_asc``, or gpg failed.
    """
    home = Path(home)
    with contextlib.suppress(OSError):
        if (home / CLIENT_KEYS_COPY).read_text(encoding="ascii") == keys_asc and (home / "trustdb.gpg").is_file():
            _set_modes(home, nobody_readable)
            return False
    work = Path(tempfile.mkdtemp(prefix="swarm-kr-", dir="/tmp"))
    scratch = work / "g"
    scratch.mkdir(mode=0o700)
    anchor = Keyring(scratch, gpg)
    try:
        _run_gpg(gpg, scratch, ["--import"], stdin=keys_asc.encode())
        published = anchor.list_keys()
        if not published:
            raise SigningError("no public key in the binhost's KEYS.asc")
        local = anchor.create(_ANCHOR_UID, 36500)
        for key in published:
            if not key.revoked and not key.expired():
                _run_gpg(gpg, scratch, ["--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                                        "--default-key", local.fingerprint, "--quick-lsign-key", key.fingerprint])
        _run_gpg(gpg, scratch, ["--check-trustdb"], check=False)
        # Public keys (anchor included, its secret not) and the trust database go to the client.
        public = _run_gpg(gpg, scratch, ["--export", "--export-options", "export-local-sigs"]).stdout
        trust = _run_gpg(gpg, scratch, ["--export-ownertrust"]).stdout
        anchor.stop_agent()
        staged = work / "client"
        staged.mkdir(mode=0o700)
        _run_gpg(gpg, staged, ["--import", "--import-options", "import-local-sigs"], stdin=public)
        _run_gpg(gpg, staged, ["--import-ownertrust"], stdin=trust)
        _run_gpg(gpg, staged, ["--check-trustdb"], check=False)
        home.mkdir(parents=True, exist_ok=True)
        for name in ("pubring.kbx", "trustdb.gpg"):
            temp = home / f".{name}.swarm-new"
            shutil.copyfile(staged / name, temp)
            os.replace(temp, home / name)
        for stale in ("pubring.kbx~", "pubring.gpg", "random_seed"):
            with contextlib.suppress(FileNotFoundError):
                (home / stale).unlink()
        write_atomic(home / CLIENT_KEYS_COPY, keys_asc)
        _set_modes(home, nobody_readable)
        return True
    finally:
        anchor.stop_agent()
        shutil.rmtree(work, ignore_errors=True)


def _set_modes(home: Path, nobody_readable: bool) -> None:
    os.chmod(home, 0o755 if nobody_readable else 0o700)
    for path in home.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o644 if nobody_readable else 0o600)


# -- health, for status and doctor -------------------------------------------------------

def keyring_from_config(config: Any) -> Keyring:
    """The binhost's signing keyring: binhost.gnupg_home, else $XDG_DATA_HOME/build-swarm/binhost-gnupg."""
    from swarmctl.paths import data_home

    cfg = config.binhost
    return Keyring(Path(cfg.gnupg_home) if cfg.gnupg_home else data_home() / "binhost-gnupg", cfg.gpg,
                   Path(cfg.key_passphrase_file) if cfg.key_passphrase_file else None)


def config_trust_problems(config: Any, *, sample: int | None = 3) -> list[TrustProblem] | None:
    """:func:`trust_problems` for this host's binhost; None when this host is no binhost (no binhost.dir)."""
    if not config.binhost.dir:
        return None
    cfg = config.binhost
    return trust_problems(keyring_from_config(config), Path(cfg.dir), warn_days=cfg.key_warn_days,
                          critical_days=cfg.key_critical_days, sample=sample)


@dataclass(frozen=True)
class TrustProblem:
    """Something wrong with the binhost's signing: ``severity`` is ``warning`` or ``critical``."""

    code: str
    severity: str
    message: str


def trust_problems(keyring: Keyring, pkgdir: Path | None, *, warn_days: float = 180, critical_days: float = 30,
                   sample: int | None = 3, now: float | None = None) -> list[TrustProblem]:
    """The signing key's state and a verification of published packages.

    Critical: no usable key (uploads are refused), a key expiring within
    ``critical_days``, a published package that fails verification against
    ``PKGDIR/KEYS.asc``. Warning: expiry within ``warn_days``.

    Args:
        keyring: The binhost's signing keyring.
        pkgdir: Its PKGDIR (None: the packages are not checked).
        sample: Verify this many most recently published packages; None: every one.
    """
    problems: list[TrustProblem] = []
    try:
        key = keyring.signing_key(now)
    except SigningError as exc:
        problems.append(TrustProblem("signing_key_missing", "critical", str(exc)))
    else:
        days = key.days_left(now)
        if days is not None and days < critical_days:
            problems.append(TrustProblem("signing_key_expiring", "critical",
                                         f"signing key {key.fingerprint[-16:]} expires in {days:.0f} days: "
                                         "swarmctl binhost key rotate"))
        elif days is not None and days < warn_days:
            problems.append(TrustProblem("signing_key_expiring", "warning",
                                         f"signing key {key.fingerprint[-16:]} expires in {days:.0f} days "
                                         "(rotate before it does: swarmctl binhost key rotate)"))
    if pkgdir is not None and (Path(pkgdir) / "Packages").is_file():
        problems.extend(_package_problems(Path(pkgdir), keyring.gpg, sample))
    return problems


def _package_problems(pkgdir: Path, gpg: str, sample: int | None) -> list[TrustProblem]:
    from swarmctl.binhost.index import PackagesIndex

    entries = PackagesIndex.read(pkgdir / "Packages").entries
    paths = sorted(entries, key=lambda p: int(entries[p].get("MTIME", "0") or 0), reverse=True)
    if sample is not None:
        paths = paths[:sample]
    if not paths:
        return []
    failed = []
    with verifying(pkgdir, gpg) as trusted:
        if not trusted.fingerprints:
            return [TrustProblem("packages_unverifiable", "critical",
                                 f"{pkgdir / KEYS_NAME} holds no public key: clients cannot verify any package")]
        for rel_path in paths:
            try:
                verify_gpkg(pkgdir / rel_path, trusted)
            except SignatureInvalid:
                failed.append(rel_path)
            except OSError:
                failed.append(rel_path)
    if not failed:
        return []
    return [TrustProblem("package_signature_bad", "critical",
                         f"{len(failed)} of {len(paths)} checked package(s) fail signature verification "
                         f"({', '.join(failed[:3])}): clients refuse them; swarmctl binhost verify")]
