#!/usr/bin/env bash
# The browser test of .ci/run: builds this crate (softmax-ce and its page's checks) for
# wasm32-unknown-unknown, binds it with wasm-bindgen, and runs test.mjs, which loads index.html
# in Debian's headless Chromium on its WebGPU adapter (SwiftShader on a machine without a GPU).
#
# The machine's rustup toolchain has no wasm32 standard library and cannot fetch one, so the
# build uses Debian 12's rustc-web/cargo-web 1.96 (bookworm-security) with rust-web-src (and
# rust-web-clippy for the lints of this build), building
# std itself (-Zbuild-std, allowed on a release compiler by RUSTC_BOOTSTRAP=1) and linking with
# LLVM 19's wasm-ld. rustup's cargo stays first on PATH: Debian's is called by its full path.
#
# Installs, as root, what is missing: those packages and chromium (apt), the wasm-bindgen
# command at exactly the version web/Cargo.lock pins (cargo install, into target/web/bin), and
# puppeteer-core (npm ci). Re-runs reuse all of it.
set -euo pipefail
cd "$(dirname "$0")"

packages=(rustc-web cargo-web rust-web-src rust-web-clippy lld-19 chromium)
missing=()
for p in "${packages[@]}"; do
    # Installed, not merely known: a removed package keeps its config files and dpkg -s
    # still answers 0 for it.
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
        missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "web/test.sh: not root, cannot install ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bindgen_version=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock)
bindgen=../target/web/bin/wasm-bindgen
if [ "$("$bindgen" --version 2>/dev/null)" != "wasm-bindgen $bindgen_version" ]; then
    echo "== installing wasm-bindgen-cli $bindgen_version"
    # Not --locked: its lock file names a webpki-roots release the registry no longer serves
    # (the HTTP client it belongs to is only for wasm-bindgen's test runner).
    cargo install --quiet wasm-bindgen-cli --version "$bindgen_version" --root ../target/web
fi

# Debian's cargo and clippy first, for these commands only.
wasm_cargo() {
    PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-19/bin/wasm-ld \
        /usr/bin/cargo "$1" --quiet --locked --target wasm32-unknown-unknown \
        -Zbuild-std=std,panic_abort --target-dir "$(pwd)/../target/web" "${@:2}"
}

echo "== cargo clippy -D warnings, wasm32: the library's browser build, and this crate"
(cd .. && wasm_cargo clippy --lib --no-default-features -- -D warnings)
wasm_cargo clippy -- -D warnings

echo "== cargo build --target wasm32-unknown-unknown (Debian's rustc-web, std built from source)"
wasm_cargo build --release
"$bindgen" --target web --no-typescript --out-dir pkg \
    ../target/web/wasm32-unknown-unknown/release/softmax_ce_web.wasm

npm ci --silent --no-audit --no-fund
node test.mjs
