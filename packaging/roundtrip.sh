#!/usr/bin/env bash
# Debian package round trip: build with cargo-deb, install, check, upgrade, remove, purge.
# Needs root and dpkg (CI runs it on a throwaway Debian machine). Fails on the first
# broken expectation with a one-line reason.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "packaging/roundtrip.sh: FAIL: $*" >&2; exit 1; }
step() { echo "packaging/roundtrip.sh: $*" >&2; }

[[ $(id -u) -eq 0 ]] || fail "must run as root (dpkg -i)"
command -v dpkg >/dev/null || fail "dpkg missing"

# The package depends on adduser and openssl (postinst uses both).
missing=()
for p in adduser openssl; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! cargo deb --version >/dev/null 2>&1; then
  step "installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

step "building the package (release build)"
rm -f target/debian/phigate_*.deb
cargo deb --quiet >/dev/null
deb=$(ls target/debian/phigate_*.deb | head -n1)
[[ -f $deb ]] || fail "no package in target/debian"

# Start from a clean slate in case an earlier run died half way.
dpkg -P phigate >/dev/null 2>&1 || true

mode_of() { stat -c '%a %U' "$1"; }

step "installing $deb"
dpkg -i "$deb" >/dev/null
getent passwd phigate >/dev/null || fail "user phigate not created"
[[ $(mode_of /var/lib/phigate) == "700 phigate" ]] || fail "/var/lib/phigate is $(mode_of /var/lib/phigate), want 700 phigate"
[[ -f /etc/phigate/master.keys ]] || fail "/etc/phigate/master.keys missing"
[[ $(mode_of /etc/phigate/master.keys) == "400 phigate" ]] || fail "master.keys is $(mode_of /etc/phigate/master.keys), want 400 phigate"
[[ -f /lib/systemd/system/phigate.service || -f /usr/lib/systemd/system/phigate.service ]] || fail "unit not installed"
phigate --version | grep -q "phigate" || fail "phigate --version"
# check-config reads the key as root here; under systemd it arrives as a credential.
phigate check-config --config /etc/phigate/phigate.toml >/dev/null || fail "check-config on the installed config"
key_sum=$(sha256sum /etc/phigate/master.keys)

step "upgrading (re-install over itself)"
dpkg -i "$deb" >/dev/null
[[ $(sha256sum /etc/phigate/master.keys) == "$key_sum" ]] || fail "upgrade changed the master key"

step "removing"
dpkg -r phigate >/dev/null
[[ ! -e /usr/bin/phigate ]] || fail "binary left after remove"
[[ -d /var/lib/phigate ]] || fail "remove deleted the data directory"
[[ $(sha256sum /etc/phigate/master.keys 2>/dev/null) == "$key_sum" ]] || fail "remove touched the master key"

step "purging"
dpkg -P phigate >/dev/null
[[ ! -e /var/lib/phigate ]] || fail "purge left /var/lib/phigate"
[[ ! -e /etc/phigate/master.keys ]] || fail "purge left the master key"
! getent passwd phigate >/dev/null || fail "purge left the user phigate"

step "OK: build, install, check-config, --version, upgrade keeps the key, remove keeps data, purge removes it"
