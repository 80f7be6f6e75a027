#!/usr/bin/env bash
# idle.sh -- phigate RSS while 10,000 idle TLS sessions are held open (IDLE_SESSIONS, IDLE_SECS).
# A thin wrapper: the setup (certificates, sink, phigate instance, cleanup) lives in compare.sh.
exec "$(dirname "$0")/compare.sh" --idle "$@"
