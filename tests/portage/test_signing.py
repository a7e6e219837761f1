"""The binhost signs what it verified, with portage's own signing; forgeries are refused.

Every signature here is made by portage's ``gpkg.update_signature`` and checked by
portage's own gpkg reader (``verify_gpkg``/``binhost verify``) or a real client.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from swarmctl.binhost.client import BinhostClient, BinhostPublisher, outcome_of
from swarmctl.binhost.index import UPLOAD_SHA256_KEY, FileDigests, IndexStore, PackagesIndex, verify
from swarmctl.binhost.publish import Publisher, PublishRefused
from swarmctl.binhost.signing import (
    KEYS_NAME,
    SignatureInvalid,
    VerifyKeyring,
    sign_gpkg,
    signature_present,
    verify_gpkg,
    verifying,
)
from tests.helpers import run_cli
from tests.portage.helpers import snapshot
from tests.portage.test_publish import HELLO, Swarm, sha

pytestmark = pytest.mark.portage
GREETER = "app-misc/greeter-1"


def replace_package(pkgdir: Path, rel_path: str, content: bytes) -> None:
    """Put other bytes at a published path and make the index describe them (a forger with
    write access to PKGDIR: only the signature can tell)."""
    (pkgdir / rel_path).write_bytes(content)
    index = PackagesIndex.read(pkgdir / "Packages")
    digests = FileDigests.of(pkgdir / rel_path)
    index.entries[rel_path].update(SIZE=str(digests.size), MD5=digests.md5, SHA1=digests.sha1,
                                   SHA256=digests.sha256)
    index.write(pkgdir / "Packages")


def flip_in_image(data: bytes) -> bytes:
    """One byte changed in the middle of the image member's data (the tar stays readable)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as container:
        image = next(m for m in container.getmembers() if m.name.endswith("/image.tar.zst"))
    altered = bytearray(data)
    altered[image.offset_data + image.size // 2] ^= 0xFF
    return bytes(altered)


def test_published_package_is_signed_and_the_index_describes_the_signed_bytes(drone, pkgdir, keyring) -> None:  # type: ignore[no-untyped-def]
    original = drone.gpkg(HELLO)
    assert not signature_present(original)
    published = Publisher(pkgdir, keyring=keyring).publish_file(original, HELLO)
    key = keyring.signing_key()
    assert published.signed_by == key.fingerprint
    served = pkgdir / published.rel_path
    assert signature_present(served)
    entry = PackagesIndex.read(pkgdir / "Packages").entries[published.rel_path]
    digests = FileDigests.of(served)
    assert (entry["SIZE"], entry["MD5"], entry["SHA1"], entry["SHA256"]) == \
        (str(digests.size), digests.md5, digests.sha1, digests.sha256)
    assert entry[UPLOAD_SHA256_KEY] == sha(original) != digests.sha256
    assert (published.sha256, published.size) == (digests.sha256, digests.size)
    keyring.publish(pkgdir)
    with verifying(pkgdir) as trusted:
        assert trusted.fingerprints == [key.fingerprint]
        verify_gpkg(served, trusted)  # portage's reader, signature required
    report = verify(pkgdir, check_signatures=True)
    assert report.ok and report.checked == 1, report.problems


def test_upload_already_signed_is_refused_and_nothing_is_published(drone, pkgdir, keyring, keyrings,  # type: ignore[no-untyped-def]
                                                                  tmp_path) -> None:
    foreign = tmp_path / "foreign.gpkg.tar"
    shutil.copy(drone.gpkg(HELLO), foreign)
    sign_gpkg(foreign, keyrings())  # a drone (or an attacker) with a key of its own
    publisher = Publisher(pkgdir, keyring=keyring)
    before = snapshot(pkgdir)
    with pytest.raises(PublishRefused) as refused:
        publisher.publish_file(foreign, HELLO)
    assert refused.value.code == "bad_package" and "signature" in str(refused.value)
    assert snapshot(pkgdir) == before and list((pkgdir / ".swarm-tmp").iterdir()) == []


def test_binhost_without_a_key_refuses_uploads_and_the_job_waits(drone, redis_client, config, pkgdir, serve,  # type: ignore[no-untyped-def]
                                                                 keyrings) -> None:
    swarm = Swarm(redis_client, config)
    keyless = keyrings(with_key=False)
    server = serve(pkgdir, swarm.gate, signing=keyless)
    artifact = drone.results[HELLO].artifacts[0]
    client = BinhostClient(server.url, "d1", swarm.token, attempts=1, timeout=10)
    verdict = client.upload(artifact.path, HELLO, swarm.leases[HELLO], sha256=artifact.sha256)
    assert (verdict.accepted, verdict.code, verdict.status) == (False, "no_signing_key", 503)
    assert "key init" in verdict.reason and "\n" not in verdict.reason
    assert verdict.retryable and outcome_of(verdict) == "retry-later"  # not a failed build
    assert swarm.queue.owner_of(HELLO) == ("d1", swarm.leases[HELLO])  # the job is untouched
    assert not (pkgdir / "app-misc").exists()
    keyless.init("swarm test <late@test.invalid>", 30)
    server.server.publisher._key = None
    publisher = BinhostPublisher(client)

    class Claim:
        cpv, lease = HELLO, swarm.leases[HELLO]

    assert publisher.publish(Claim(), drone.results[HELLO], 1.0) == "ok"


@pytest.mark.parametrize("forgery", ["stripped", "other_key", "altered"])
def test_forged_packages_are_refused_by_binhost_verify(forgery, drone, pkgdir, keyring, keyrings,  # type: ignore[no-untyped-def]
                                                       swarm_env) -> None:
    publisher = Publisher(pkgdir, keyring=keyring)
    hello = publisher.publish_file(drone.gpkg(HELLO), HELLO)
    publisher.publish_file(drone.gpkg(GREETER), GREETER)
    keyring.publish(pkgdir)
    run_cli(["binhost", "verify", "--dir", str(pkgdir)], swarm_env)
    signed = (pkgdir / hello.rel_path).read_bytes()
    if forgery == "stripped":
        content = drone.gpkg(HELLO).read_bytes()  # the same package with no signature at all
    elif forgery == "other_key":
        scratch = pkgdir.parent / "other.gpkg.tar"
        shutil.copy(drone.gpkg(HELLO), scratch)
        sign_gpkg(scratch, keyrings())
        content = scratch.read_bytes()
    else:
        content = flip_in_image(signed)
    replace_package(pkgdir, hello.rel_path, content)
    with VerifyKeyring((pkgdir / KEYS_NAME).read_text()) as trusted, pytest.raises(SignatureInvalid):
        verify_gpkg(pkgdir / hello.rel_path, trusted)
    report = verify(pkgdir, check_signatures=True)
    assert [p.split(":")[0] for p in report.problems] == [Path(hello.rel_path).name]
    done = run_cli(["binhost", "verify", "--dir", str(pkgdir)], swarm_env, check=False)
    assert done.returncode != 0 and "1 problem(s)" in done.stderr


def test_reindex_keeps_signed_packages_and_refuses_to_drop_one(drone, pkgdir, keyring, keyrings,  # type: ignore[no-untyped-def]
                                                               swarm_env) -> None:
    publisher = Publisher(pkgdir, keyring=keyring)
    hello = publisher.publish_file(drone.gpkg(HELLO), HELLO)
    publisher.publish_file(drone.gpkg(GREETER), GREETER)
    publisher.store.close()  # no restamp: the index may change only through the commands below
    keyring.publish(pkgdir)
    done = run_cli(["binhost", "reindex", "--dir", str(pkgdir)], swarm_env)
    assert "indexed 2 package(s)" in done.stdout + done.stderr
    assert verify(pkgdir, check_signatures=True).ok
    scratch = pkgdir.parent / "other.gpkg.tar"
    shutil.copy(drone.gpkg(HELLO), scratch)
    sign_gpkg(scratch, keyrings())
    replace_package(pkgdir, hello.rel_path, scratch.read_bytes())
    before = (pkgdir / "Packages").read_bytes()
    done = run_cli(["binhost", "reindex", "--dir", str(pkgdir)], swarm_env, check=False)
    assert done.returncode != 0 and "would drop 1 of 2" in done.stderr
    assert (pkgdir / "Packages").read_bytes() == before


def test_key_lifecycle_from_the_cli(drone, pkgdir, swarm_env, keyrings) -> None:  # type: ignore[no-untyped-def]
    home = keyrings(with_key=False).home
    env = {**swarm_env, "SWARM_BINHOST_GNUPG_HOME": str(home), "SWARM_BINHOST_DIR": str(pkgdir),
           "SWARM_BINHOST_KEY_EXPIRY_DAYS": "90"}
    missing = run_cli(["binhost", "key", "show"], env, check=False)
    assert missing.returncode != 0 and "key init" in missing.stderr
    init = run_cli(["binhost", "key", "init"], env)
    assert "revocation certificate" in init.stdout and (pkgdir / KEYS_NAME).is_file()
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    again = run_cli(["binhost", "key", "init"], env, check=False)
    assert again.returncode != 0 and "rotate" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    from swarmctl.binhost.signing import Keyring

    first = Keyring(home).signing_key()
    assert 89 < (first.days_left() or 0) <= 90
    assert f"signing with: {first.fingerprint}" in run_cli(["binhost", "key", "show"], env).stdout
    old_package = Publisher(pkgdir, keyring=Keyring(home)).publish_file(drone.gpkg(HELLO), HELLO)
    run_cli(["binhost", "key", "rotate"], env)
    second = Keyring(home).signing_key()
    assert second.fingerprint != first.fingerprint
    exported = run_cli(["binhost", "key", "export"], env).stdout
    assert exported == (pkgdir / KEYS_NAME).read_text()
    with VerifyKeyring(exported) as trusted:  # overlap: both trusted, the old package still verifies
        assert sorted(trusted.fingerprints) == sorted([first.fingerprint, second.fingerprint])
        verify_gpkg(pkgdir / old_package.rel_path, trusted)
    run_cli(["binhost", "key", "revoke", "--yes", first.fingerprint], env)
    shown = run_cli(["binhost", "key", "show"], env).stdout
    assert f"{first.fingerprint}  revoked" in shown and f"signing with: {second.fingerprint}" in shown
    with VerifyKeyring((pkgdir / KEYS_NAME).read_text()) as trusted, pytest.raises(SignatureInvalid):
        verify_gpkg(pkgdir / old_package.rel_path, trusted)  # the revocation reached KEYS.asc
    run_cli(["binhost", "key", "retire", first.fingerprint], env)
    with VerifyKeyring((pkgdir / KEYS_NAME).read_text()) as trusted:
        assert trusted.fingerprints == [second.fingerprint]
    refused = run_cli(["binhost", "key", "retire", second.fingerprint], env, check=False)
    assert refused.returncode != 0 and "signs now" in refused.stderr


def test_signing_home_belonging_to_someone_else_is_not_used(keyring) -> None:  # type: ignore[no-untyped-def]
    if os.getuid() != 0:
        pytest.skip("needs root to hand the home to another user")
    os.chown(keyring.home, 65534, 65534)
    try:
        from swarmctl.binhost.signing import NoSigningKey

        with pytest.raises(NoSigningKey, match="uid 65534"):
            keyring.signing_key()
    finally:
        os.chown(keyring.home, 0, 0)
    subprocess.run(["true"], check=True)


@pytest.mark.parametrize(("days", "expected"), [(400, None), (100, "warning"), (20, "critical")])
def test_key_expiry_warns_at_180_days_and_goes_red_at_30(days, expected, keyrings, pkgdir) -> None:  # type: ignore[no-untyped-def]
    from swarmctl.binhost.signing import trust_problems

    problems = trust_problems(keyrings(days=days), pkgdir)
    assert [(p.code, p.severity) for p in problems] == ([] if expected is None else
                                                         [("signing_key_expiring", expected)])


def test_status_and_doctor_go_red_without_a_key_or_with_a_bad_package(drone, pkgdir, keyring, keyrings,  # type: ignore[no-untyped-def]
                                                                      swarm_env) -> None:
    publisher = Publisher(pkgdir, keyring=keyring)
    hello = publisher.publish_file(drone.gpkg(HELLO), HELLO)
    keyring.publish(pkgdir)
    env = {**swarm_env, "SWARM_BINHOST_DIR": str(pkgdir), "SWARM_BINHOST_GNUPG_HOME": str(keyring.home)}
    status = json.loads(run_cli(["status", "--json"], env, check=False).stdout)
    assert not [a for a in status["attention"] if a["code"].startswith(("signing", "package"))]
    checks = {c["name"]: c for c in json.loads(run_cli(["doctor", "--json"], env, check=False).stdout)["checks"]}
    assert checks["signing"]["state"] == "ok" and "signing key usable" in checks["signing"]["summary"]
    replace_package(pkgdir, hello.rel_path, drone.gpkg(HELLO).read_bytes())  # signature stripped
    status = json.loads(run_cli(["status", "--json"], env, check=False).stdout)
    assert {(a["code"], a["severity"]) for a in status["attention"]} >= {("package_signature_bad", "critical")}
    keyless = {**env, "SWARM_BINHOST_GNUPG_HOME": str(keyrings(with_key=False).home)}
    doctor = run_cli(["doctor", "--json"], keyless, check=False)
    signing = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["signing"]
    assert doctor.returncode == 2 and signing["state"] == "fail"
    assert "key init" in signing["summary"] and "fail signature verification" in signing["summary"]
    assert "Binary package is not usable" not in doctor.stderr  # one line per problem, not portage's report


SIGNING_CRASHER = """
import shutil, sys
from pathlib import Path
from portage.gpkg import gpkg
from swarmctl.binhost.gpkg import _ReaderSettings
from swarmctl.binhost.publish import Publisher
from swarmctl.binhost.signing import Keyring
source, pkgdir, home, work = map(Path, sys.argv[1:5])
publisher = Publisher(pkgdir, keyring=Keyring(home))
settings = _ReaderSettings(MAKEOPTS="-j1", BINPKG_COMPRESS="zstd")
settings.features = frozenset()
for build_id in range(int(sys.argv[5]), 10**6):
    variant = work / f"hello-1-{build_id}.gpkg.tar"
    shutil.copy(source, variant)
    package = gpkg(settings, None, str(variant))
    metadata = package.get_metadata()
    metadata["BUILD_ID"] = f"{build_id}\\n".encode()
    package.update_metadata(metadata, new_basename=f"hello-1-{build_id}")
    publisher.publish_file(variant, "app-misc/hello-1")
    print(build_id, flush=True)
"""


def test_kill_9_while_signing_and_publishing_leaves_only_whole_signed_packages(drone, pkgdir, keyring,  # type: ignore[no-untyped-def]
                                                                             tmp_path) -> None:
    import gzip
    import subprocess
    import sys
    import time

    keyring.publish(pkgdir)
    (tmp_path / "work").mkdir()
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SIGNING_CRASHER, str(drone.gpkg(HELLO)), str(pkgdir),
                                 str(keyring.home), str(tmp_path / "work"), str(100 + round_ * 1000)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(2.0 + 0.37 * round_)  # mid-publish: most of a publish is signing
        proc.kill()
        published_before_kill = proc.communicate()[0].split()
        assert published_before_kill, "nothing was published before the kill: the test proves nothing"
        index = PackagesIndex.read(pkgdir / "Packages")
        visible = sorted(p.relative_to(pkgdir).as_posix() for p in pkgdir.glob("app-misc/hello/*.gpkg.tar"))
        assert set(index.entries) <= set(visible)  # no entry without its file
        with verifying(pkgdir) as trusted:
            for rel in visible:  # every visible package is whole and signed by the binhost
                verify_gpkg(pkgdir / rel, trusted)
        with IndexStore(pkgdir).locked():
            pass
        assert gzip.decompress((pkgdir / "Packages.gz").read_bytes()) == (pkgdir / "Packages").read_bytes()
    # At worst a package linked just before its group's index write is not indexed yet
    # (start-up recovery adopts or removes it); everything indexed verifies.
    problems = verify(pkgdir, check_signatures=True).problems
    assert all(p.endswith("package file not in the index") for p in problems), problems


def test_drone_takes_the_pinned_keys_file_or_fetches_them_from_the_binhost(pkgdir, keyring, serve,  # type: ignore[no-untyped-def]
                                                                          tmp_path) -> None:
    from swarmctl.config import load_config
    from swarmctl.drone.configured import binhost_keys
    from swarmctl.exceptions import ConfigError
    from tests.portage.test_portage_client import OpenGate

    published = keyring.publish(pkgdir).read_text()
    pinned = load_config(environ={"SWARM_BINHOST_KEYS_FILE": str(pkgdir / KEYS_NAME)})
    assert binhost_keys(pinned) == published
    with pytest.raises(ConfigError, match="cannot read"):
        binhost_keys(load_config(environ={"SWARM_BINHOST_KEYS_FILE": str(tmp_path / "missing.asc")}))
    server = serve(pkgdir, OpenGate())
    assert binhost_keys(load_config(environ={"SWARM_BINHOST_URL": server.url})) == published
    assert binhost_keys(load_config(environ={"SWARM_BINHOST_URL": "http://127.0.0.1:9"})) is None


def test_a_passphrase_protected_key_signs_only_with_its_private_passphrase_file(drone, keyrings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from swarmctl.binhost.signing import Keyring, NoSigningKey, SigningError

    bare = keyrings(with_key=False)
    secret = "correct horse battery staple"
    passphrase = bare.home.parent / "passphrase"
    passphrase.write_text(secret + "\n")
    passphrase.chmod(0o600)
    locked = Keyring(bare.home, passphrase_file=passphrase)
    locked.init("swarm test <binhost@test.invalid>", 30)
    locked.stop_agent()  # no passphrase cached: every signature below unlocks the key anew
    package = shutil.copy(drone.gpkg(HELLO), tmp_path / "signed.gpkg.tar")
    sign_gpkg(package, locked)
    with VerifyKeyring(locked.export()) as trusted:
        verify_gpkg(package, trusted)
    locked.stop_agent()
    with pytest.raises(SigningError) as without:  # the same home without the passphrase cannot sign
        sign_gpkg(shutil.copy(drone.gpkg(HELLO), tmp_path / "unsigned.gpkg.tar"), bare)
    passphrase.chmod(0o640)
    with pytest.raises(NoSigningKey, match="mode 640, must be 600") as readable:
        locked.signing_key()
    assert secret not in str(without.value) + str(readable.value)
