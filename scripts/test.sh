#!/usr/bin/env bash
# phigate's single test command (README and .ci/run use it).
#
# Installs the independent SMTP peers the integration tests drive (swaks, Postfix,
# openssl, Python with aiosmtpd and cryptography, testssl, tshark, rsyslog) and the real
# browser of the portal tests (Chromium, chromedriver, PIL) when missing on a
# Debian/Ubuntu machine, then runs `cargo test --all-targets`. Extra arguments go to
# cargo test, e.g.
#   scripts/test.sh --test ingress_smuggling
# Idempotent; quiet unless something is installed or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install() {
  for bin in swaks openssl testssl tshark /usr/sbin/postfix /usr/sbin/sendmail /usr/bin/python3 \
    knotd kdig ldns-keygen ldns-signzone systemd-analyze dpkg-deb /usr/sbin/rsyslogd curl; do
    command -v "$bin" >/dev/null 2>&1 || return 0
  done
  # swaks needs IO::Socket::SSL for --tls.
  perl -MIO::Socket::SSL -e 1 >/dev/null 2>&1 || return 0
  # tests/peers/tls_sink.py (the receiving MTA of tests/phi_leak.rs).
  /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || return 0
  # tests/peers/oracle_store.py (the independent reader of tests/oracles.rs).
  /usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || return 0
  # tests/peers/openapi_check.py (responses against the API's OpenAPI document).
  /usr/bin/python3 -c 'import jsonschema' >/dev/null 2>&1 || return 0
  # tests/peers/dkim_verify.py (dkimpy, with PyNaCl for Ed25519 signatures).
  /usr/bin/python3 -c 'import dkim, nacl' >/dev/null 2>&1 || return 0
  # tests/peers/webdriver.py (the real browser of the portal tests; PIL checks screenshots).
  for bin in /usr/bin/chromium /usr/bin/chromedriver; do
    [[ -x $bin ]] || return 0
  done
  /usr/bin/python3 -c 'import PIL' >/dev/null 2>&1 || return 0
  return 1
}

if need_install; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: test peers missing (swaks, postfix, openssl, python3-aiosmtpd, python3-cryptography, python3-jsonschema, python3-dkim, curl, testssl, tshark, knot, ldns, systemd-analyze, rsyslog, chromium, chromium-driver, python3-pil);" \
      "install them as root, or tests that need them are skipped (they fail with CI=true)" >&2
  else
    echo "scripts/test.sh: installing test peers (swaks, postfix, openssl, python3-aiosmtpd, python3-cryptography, python3-jsonschema, python3-dkim, curl, testssl, tshark, knot, ldns, systemd-analyze, rsyslog, chromium, chromium-driver, python3-pil)" >&2
    if [[ -z $(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true) ]]; then
      apt-get update -qq >/dev/null
    fi
    # Postfix is only a client here: no system mail configuration, no daemon.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # tshark captures as root only; no setuid dumpcap group.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      swaks libnet-ssleay-perl libio-socket-ssl-perl postfix openssl python3 ca-certificates \
      knot knot-dnsutils ldnsutils systemd dpkg-dev adduser \
      python3-aiosmtpd python3-cryptography python3-jsonschema python3-dkim python3-nacl curl testssl.sh tshark rsyslog \
      chromium chromium-driver python3-pil \
      >/dev/null
  fi
fi

rc=0
cargo test --quiet --no-fail-fast --all-targets "$@" || rc=$?

# Disk full: the spool on a 2 MB tmpfs fills up, refuses with an I/O error, and
# resumes once space returns. Needs root to mount; a failure to mount fails under CI=true.
small=$(mktemp -d)
if [[ $(id -u) -eq 0 ]] && mount -t tmpfs -o size=2m phigate-small "$small" 2>/dev/null; then
  PHIGATE_SMALL_FS=$small cargo test --quiet --test spool_disk_full -- --ignored || rc=$?
  umount "$small"
elif [[ ${CI:-} == true ]]; then
  echo "scripts/test.sh: cannot mount a small tmpfs for the disk-full test (CI=true)" >&2
  rc=1
else
  echo "scripts/test.sh: SKIP disk-full test (needs root to mount a small tmpfs)" >&2
fi
rmdir "$small" 2>/dev/null || true
exit "$rc"
