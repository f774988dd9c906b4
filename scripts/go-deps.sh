#!/usr/bin/env bash
# Installs the Debian packages the Go client builds and tests with (see docs/go-client.md).
#
# This machine's registries have no Go module proxy, so the Go dependencies come from Debian:
# their sources land under /usr/share/gocode and client/go/gopath.sh builds against them in
# GOPATH mode. golang-github-golang-protobuf-1-5-dev is named explicitly: grpc's Debian package
# is satisfied by the 1.3 line too, whose APIv1 codec cannot marshal protoc-gen-go 1.28 messages.
set -euo pipefail

packages=(
  golang-go
  protobuf-compiler
  protoc-gen-go
  protoc-gen-go-grpc
  golang-google-grpc-dev
  golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "go-deps: all Debian packages already installed"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
