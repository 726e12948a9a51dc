"""The runtime image carries every shared library the binaries need (scripts/image-libs).

The binaries link the system OpenSSL 3 for Kafka TLS and SASL/SCRAM (rdkafka feature `ssl`);
gcr.io/distroless/cc-debian12 carries it. The Dockerfile runs the check on the release
binaries; here it also runs on whatever local build exists (CARGO_TARGET_DIR or target/).
"""

import os
import pathlib
import re
import subprocess

import pytest

from conftest import ROOT

BINARIES = ("profile-api", "profile-consumer", "profile-operator")


def test_dockerfile_checks_the_binaries_shared_libraries_and_ships_the_script():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"scripts/image-libs /out/profile-api /out/profile-consumer /out/profile-operator", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "!scripts/image-libs" in ignored, "the script must be in the build context"
    cargo = (ROOT / "Cargo.toml").read_text()
    rdkafka = re.search(r"^rdkafka = \{.*\}$", cargo, re.M).group(0)
    assert '"ssl"' in rdkafka and '"ssl-vendored"' not in rdkafka and '"sasl"' not in rdkafka, rdkafka


def local_binaries():
    dirs = [pathlib.Path(os.environ["CARGO_TARGET_DIR"])] if os.environ.get("CARGO_TARGET_DIR") else []
    dirs.append(ROOT / "target")
    for target in dirs:
        for profile in ("release", "debug"):
            found = [target / profile / b for b in BINARIES if (target / profile / b).is_file()]
            if len(found) == len(BINARIES):
                return found
    return []


def test_local_binaries_need_only_what_the_image_carries():
    binaries = local_binaries()
    if not binaries:
        pytest.skip("no local build of the three binaries")
    res = subprocess.run([str(ROOT / "scripts/image-libs"), *map(str, binaries)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "libssl.so.3" in res.stdout


def test_the_check_refuses_a_binary_without_openssl(tmp_path):
    # /bin/true links only glibc: no TLS, which the check must call out.
    res = subprocess.run([str(ROOT / "scripts/image-libs"), "/bin/true"], capture_output=True, text=True)
    assert res.returncode == 1
    assert "does not link libssl.so.3" in res.stderr
