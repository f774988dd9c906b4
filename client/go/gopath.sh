#!/usr/bin/env bash
# Runs a go command on this module in GOPATH mode against Debian's Go sources (offline build).
#
#   client/go/gopath.sh go vet ./...
#   client/go/gopath.sh go test ./...
#
# Why GOPATH mode: this machine has no Go module proxy, and Debian ships the dependencies as
# sources under /usr/share/gocode in a GOPATH layout. go.mod keeps ordinary requirements for
# users elsewhere; GOPATH mode ignores it. A private GOPATH links the repository in at its
# import path, so the module's packages resolve and the tests can still find the repo root.
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd "$module_dir/../.." && pwd -P)"
debian_gopath="${LIL_DEBIAN_GOPATH:-/usr/share/gocode}"
# One private GOPATH per checkout, so two clones on one machine never swap each other's link.
checkout_id="$(printf %s "$repo_root" | md5sum | cut -c1-12)"
private_gopath="${LIL_GOPATH:-${TMPDIR:-/tmp}/lil-sparse-gopath-$(id -u)-$checkout_id}"

link_parent="$private_gopath/src/github.com/lil-sparse"
mkdir -p "$link_parent"
ln -sfn "$repo_root" "$link_parent/lil-sparse"

export GO111MODULE=off
export GOPATH="$private_gopath:$debian_gopath"
if [ -z "${GOCACHE:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
  export GOCACHE="$private_gopath/cache"  # go refuses to build without a cache folder
fi
export LIL_SPARSE_REPO_ROOT="${LIL_SPARSE_REPO_ROOT:-$repo_root}"

cd "$link_parent/lil-sparse/client/go"
exec "$@"
