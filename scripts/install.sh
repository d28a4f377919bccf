#!/usr/bin/env bash
# Installs ringproxy as a systemd service: builds the release binary, installs it to
# /usr/local/bin, the config to /etc/ringproxy/config.toml (kept if it exists), the unit to
# /etc/systemd/system, and creates the ringproxy system user. Run as root from the repo.
#   bash scripts/install.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" != "--no-build" ]]; then
    cargo build --release
fi
install -D -m 0755 target/release/ringproxy /usr/local/bin/ringproxy
if ! id ringproxy >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin ringproxy
fi
install -d -m 0755 /etc/ringproxy
if [[ ! -e /etc/ringproxy/config.toml ]]; then
    install -m 0644 config.toml /etc/ringproxy/config.toml
else
    echo "keeping existing /etc/ringproxy/config.toml"
fi
/usr/local/bin/ringproxy --check -c /etc/ringproxy/config.toml
install -D -m 0644 README.md /usr/local/share/doc/ringproxy/README.md
install -D -m 0644 scripts/ringproxy.service /etc/systemd/system/ringproxy.service
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now ringproxy"
else
    echo "installed; systemd is not running here, so the unit was not loaded"
fi
