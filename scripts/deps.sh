#!/usr/bin/env bash
# Installs the host tools `make test` needs beyond Go, Java and Maven:
# Debian's thrift-compiler (to check that thrift/gen is current), openssl
# (a test runs the README's certificate recipe) and chromium (the
# dashboard's browser test drives it headless; no test downloads a
# browser). The engines script installs ZooKeeper itself.
set -euo pipefail
sudo=
[[ $(id -u) == 0 ]] || sudo=sudo
missing=()
command -v thrift >/dev/null || missing+=(thrift-compiler)
command -v openssl >/dev/null || missing+=(openssl)
# Any browser internal/browser accepts (Find) will do.
browser=${FREEWAY_CHROMIUM:-}
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  [[ -n $browser ]] || ! command -v "$b" >/dev/null || browser=$b
done
[[ -n $browser ]] || missing+=(chromium)
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  if [[ -n $sudo ]] && ! command -v sudo >/dev/null; then
    echo "deps: not root and no sudo: install ${missing[*]} by hand (Debian packages)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  }
fi
