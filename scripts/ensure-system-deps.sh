#!/usr/bin/env bash
# Makes sure the system tools connector-acl and its kernel tests need are installed:
#   nft (nftables), ip (iproute2), conntrack (conntrack), ping (iputils-ping), sysctl (procps),
#   python3 (python3: the harness's raw-IP agent sends and reflects GRE and other protocols).
# Installs only what is missing, with apt-get; runs `apt-get update` only when an install is needed.
# Exits non-zero with a message when something is missing and cannot be installed.
set -euo pipefail

declare -A PACKAGE_OF=(
  [nft]=nftables
  [ip]=iproute2
  [conntrack]=conntrack
  [ping]=iputils-ping
  [sysctl]=procps
  [python3]=python3
)

missing_packages=()
missing_commands=()
for cmd in nft ip conntrack ping sysctl python3; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing_commands+=("$cmd")
    missing_packages+=("${PACKAGE_OF[$cmd]}")
  fi
done

if [ ${#missing_packages[@]} -eq 0 ]; then
  exit 0
fi

echo "connector-acl: missing system commands: ${missing_commands[*]} (packages: ${missing_packages[*]})" >&2

if [ "$(id -u)" -ne 0 ]; then
  echo "connector-acl: cannot install them: not running as root. Install as root: apt-get install -y ${missing_packages[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "connector-acl: cannot install them: apt-get is not available. Install ${missing_packages[*]} with your package manager." >&2
  exit 1
fi

echo "connector-acl: installing ${missing_packages[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >&2; then
  echo "connector-acl: apt-get update failed" >&2
  exit 1
fi
if ! apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >&2; then
  echo "connector-acl: apt-get install ${missing_packages[*]} failed" >&2
  exit 1
fi

for cmd in "${missing_commands[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "connector-acl: '$cmd' is still missing after installing ${PACKAGE_OF[$cmd]}" >&2
    exit 1
  fi
done
echo "connector-acl: system dependencies installed" >&2
