#!/usr/bin/env bash
# Makes a self-signed ECDSA P-256 certificate for trying HTTPS: tls/selfsigned.pem and
# tls/selfsigned.key (next to config.toml), valid 30 days for localhost, 127.0.0.1 and ::1
# (and any further names given). Then uncomment the [tls] block of config.toml, or:
#
#   bash scripts/selfsigned.sh                 # tls/selfsigned.{pem,key}
#   bash scripts/selfsigned.sh app.test        # also for app.test
#   curl -k https://localhost:3443/            # with the demo running (scripts/demo.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { echo "selfsigned: openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p tls
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
    san="$san,DNS:$name"
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=localhost" -addext "subjectAltName=$san" \
    -keyout tls/selfsigned.key -out tls/selfsigned.pem 2>/dev/null
chmod 600 tls/selfsigned.key
echo "wrote tls/selfsigned.pem and tls/selfsigned.key ($san)"
