#!/usr/bin/env bash
# Installs connector-acl on a Debian (12+) Connector from a checkout of this repository:
#   /opt/connector-acl           the code (dist/, rules/, docs/, production node_modules)
#   /usr/local/bin/connector-acl a wrapper that runs it with the system's node
#   /etc/connector-acl/          config.yaml (an example, only if there is none), credentials
#   /var/lib/connector-acl       state: last-known-good, status, the ACL store (StateDirectory=)
#   connector-acl-boot.service   fail-closed ruleset before the network (enabled)
#   connector-acl.service        the agent (enabled and started unless --no-start)
# Re-running it upgrades the code and units and keeps config, credentials and state.
#
#   sudo scripts/install.sh [--prefix /opt/connector-acl] [--no-start]
set -euo pipefail

PREFIX=/opt/connector-acl
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ETC=/etc/connector-acl
USER_NAME=connector-acl

die() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
command -v systemctl >/dev/null || die "systemd is required"

# System packages: nftables and iproute2 for the engine, node >= 20 and npm to run and build it.
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node $(node --version) is too old: connector-acl needs Node.js 20 or later"
NODE=$(command -v node)

# Build from the checkout (dev dependencies only here), then install production dependencies only.
if [ ! -f "$SRC/dist/agent/cli/main.js" ]; then
  (cd "$SRC" && npm ci --no-audit --no-fund && npm run build)
fi
install -d -m 0755 "$PREFIX"
rm -rf "$PREFIX/dist.new"
cp -a "$SRC/dist" "$PREFIX/dist.new"
rm -rf "$PREFIX/dist" && mv "$PREFIX/dist.new" "$PREFIX/dist"
for d in rules docs systemd; do rm -rf "${PREFIX:?}/$d"; cp -a "$SRC/$d" "$PREFIX/$d"; done
install -m 0644 "$SRC/package.json" "$SRC/package-lock.json" "$PREFIX/"
# --ignore-scripts: the package's own "prepare" (a tsc build) must not run here; better-sqlite3's
# native module is then built or fetched by its own install step alone.
(cd "$PREFIX" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm rebuild better-sqlite3)

# The wrapper: the system node, the installed code.
cat > /usr/local/bin/connector-acl.new <<EOF
#!/bin/sh
exec "$NODE" "$PREFIX/dist/agent/cli/main.js" "\$@"
EOF
chmod 0755 /usr/local/bin/connector-acl.new
mv /usr/local/bin/connector-acl.new /usr/local/bin/connector-acl

# A system user that holds only CAP_NET_ADMIN (granted by the unit).
if ! getent passwd "$USER_NAME" >/dev/null; then
  useradd --system --home-dir /var/lib/connector-acl --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
fi

install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
if [ ! -e "$ETC/config.yaml" ]; then
  cat > "$ETC/config.yaml" <<'EOF'
# connector-acl site config: see /opt/connector-acl/docs/operations.md. Edit the LANs to match
# this Connector, then: systemctl restart connector-acl (or reload for LAN/tunnel changes).
table: connector_acl
lans:
  - id: 6b1e2f0a9c8d4e11a2b3c4d5e6f70001
    name: LAN 1
    interface: eth1
  - id: 6b1e2f0a9c8d4e11a2b3c4d5e6f70002
    name: LAN 2
    interface: eth2
# tunnel:                 # needed as soon as a policy goes via Cloudflare
#   interface: cf0
agent:
  source: local           # local | remote | file
  state_dir: /var/lib/connector-acl
  local_api:
    listen: 127.0.0.1:8787
    account_id: 023e105f4ecef8ad9ca31a8372d0c353
    site_id: 9d6e1c2a7b3f4e5d8c9b0a1f2e3d4c5b
    auth:
      api_token_file: /etc/connector-acl/api-token
  metrics_listen: 127.0.0.1:9464
EOF
  chmod 0640 "$ETC/config.yaml"
  chgrp "$USER_NAME" "$ETC/config.yaml"
  echo "installed an example $ETC/config.yaml: edit its LANs before relying on it"
fi
if [ ! -e "$ETC/api-token" ]; then
  umask 077
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ETC/api-token"
  chown "$USER_NAME:$USER_NAME" "$ETC/api-token"
  chmod 0600 "$ETC/api-token"
  echo "generated a local API token in $ETC/api-token (Authorization: Bearer <token>)"
fi

install -m 0644 "$SRC/systemd/connector-acl-boot.service" "$SRC/systemd/connector-acl.service" /etc/systemd/system/
sed -i "s#/opt/connector-acl#$PREFIX#g" /etc/systemd/system/connector-acl-boot.service /etc/systemd/system/connector-acl.service
systemctl daemon-reload
systemctl enable connector-acl-boot.service connector-acl.service
if [ "$START" -eq 1 ]; then
  systemctl start connector-acl-boot.service
  systemctl restart connector-acl.service
  systemctl --no-pager --lines=5 status connector-acl.service || true
fi
echo "connector-acl installed in $PREFIX; status: connector-acl -c $ETC/config.yaml status"
