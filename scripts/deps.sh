#!/usr/bin/env bash
# Installs what building, running and testing Torus needs on Debian: the Go
# modules, the Debian packages of the NBD clients, fio, qemu tools, nbdkit,
# etcd and chromium used by the tests and the benchmark, and the npm
# packages of the dashboard test (tests/ui). Safe to run again: it installs
# only what is missing.
set -euo pipefail

need_go="1.26"
if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		export PATH="/usr/local/go/bin:$PATH"
	else
		echo "deps: Go ${need_go} or newer is required (https://go.dev/doc/install); 'go' is not on PATH" >&2
		exit 1
	fi
fi

# program -> Debian package
declare -A pkgs=(
	[nbdinfo]=libnbd-bin
	[nbdcopy]=libnbd-bin
	[nbdfuse]=nbdfuse
	[nbdkit]=nbdkit
	[qemu-img]=qemu-utils
	[qemu-io]=qemu-utils
	[qemu-nbd]=qemu-utils
	[fio]=fio
	[etcd]=etcd-server
	[etcdctl]=etcd-client
	[fusermount3]=fuse3
	[mkfs.ext4]=e2fsprogs
	[resize2fs]=e2fsprogs
	[mkfs.xfs]=xfsprogs
	[xfs_growfs]=xfsprogs
	[blkid]=util-linux
	[losetup]=mount
	[ip]=iproute2
	[certtool]=gnutls-bin
	[chromium]=chromium
	[node]=nodejs
	[npm]=npm
)
missing=()
for prog in "${!pkgs[@]}"; do
	if ! command -v "$prog" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$prog" ] && [ ! -x "/sbin/$prog" ]; then
		missing+=("${pkgs[$prog]}")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t uniq < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "deps: installing Debian packages: ${uniq[*]}"
	SUDO=""
	if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q
	$SUDO apt-get install -y -q --no-install-recommends "${uniq[@]}"
fi
# The Debian etcd-server package starts a system etcd on 127.0.0.1:2379,
# which would collide with `torusd --dev`. Tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
	systemctl stop etcd || true
	systemctl disable etcd >/dev/null 2>&1 || true
fi
go mod download
# The dashboard test (tests/life TestDashboard) drives Debian's chromium
# with playwright-core, pinned by tests/ui/package-lock.json; npm ci never
# downloads a browser of its own.
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -f "$root/tests/ui/node_modules/.package-lock.json" ] ||
	! cmp -s "$root/tests/ui/package-lock.json" "$root/tests/ui/node_modules/.package-lock.json.ci"; then
	echo "deps: npm ci in tests/ui"
	(cd "$root/tests/ui" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.package-lock.json.ci)
fi
