#!/usr/bin/env bash
# setup.sh: install a second WebGPU implementation (Dawn, via the npm package `webgpu`) beside
# this folder, for the Dawn step of .ci/run, on Debian 12 (bookworm) without a GPU.
# Idempotent; re-runs take about a second. Everything goes into gitignored folders here.
#
#  0. node and npm from Debian when missing (as root).
#  1. bookworm's own runtime libraries that Mesa 25 lavapipe links against (apt-get install
#     --no-upgrade, as root, only if some is missing: machines with Mesa 22.3's
#     mesa-vulkan-drivers have them all).
#  2. mesa-vulkan-drivers from bookworm-backports, DOWNLOADED ONLY (apt-get download with a
#     private apt config under .apt/: the system's sources and its Mesa 22.3 are not touched,
#     so the rest of CI keeps running on the system's lavapipe), unpacked with dpkg-deb -x; only
#     libvulkan_lvp.so is kept, in .mesa25/. Dawn refuses Mesa 22.3's lavapipe (it lacks
#     shaderSampledImageArrayDynamicIndexing).
#  3. .mesa25/lvp_icd.json: a Vulkan ICD manifest with the absolute path to that library,
#     selected with VK_ICD_FILENAMES by dawn.mjs for its own process only.
#  4. npm ci of the pinned webgpu package (package.json / package-lock.json: webgpu 0.6.2).
#
# Env: MESA_DEB=/path/to/mesa-vulkan-drivers_*.deb  use this .deb instead of downloading one
#      MESA_VERSION=...    the backports version wanted (default below); if the archive no longer
#                          has it (backports keeps only its newest), the newest is used, loudly.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MESA_VERSION="${MESA_VERSION:-25.0.7-2~bpo12+1}"
MESA_DIR="$HERE/.mesa25"
APT_DIR="$HERE/.apt"
LVP="$MESA_DIR/libvulkan_lvp.so"
ICD="$MESA_DIR/lvp_icd.json"
T0=$(date +%s%N)
say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[setup %3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }

root() { [ "$(id -u)" = 0 ] || { echo "setup.sh: $1 needs root" >&2; exit 1; }; }
. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || say "warning: this is ${PRETTY_NAME:-unknown}, made for Debian 12 (bookworm)"

# --- 0. node and npm --------------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  root "installing nodejs and npm"
  say "installing nodejs npm (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# --- 1. runtime libraries from bookworm itself ------------------------------------------------
# The Depends of mesa-vulkan-drivers 25.0.7-2~bpo12+1 less the radeon-only libdrm-amdgpu1;
# all are bookworm packages (libLLVM-15 is bookworm's own). --no-upgrade: nothing installed moves.
DEPS="libvulkan1 libllvm15 libdrm2 libelf1 libexpat1 libwayland-client0 libx11-xcb1 libxcb-dri3-0
      libxcb-present0 libxcb-randr0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb1 libxshmfence1
      libzstd1 zlib1g libstdc++6 libgcc-s1"
missing=""
for p in $DEPS; do
  dpkg-query -W -f='${Status}' "$p:amd64" 2>/dev/null | grep -q 'install ok installed' ||
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  root "installing$missing"
  say "installing bookworm runtime libraries:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade --no-install-recommends $missing
else
  say "bookworm runtime libraries: all present"
fi

# --- 2. Mesa 25 lavapipe, unpacked beside the project -------------------------------------------
mkdir -p "$MESA_DIR"
if [ -f "$LVP" ] && [ -f "$MESA_DIR/VERSION" ]; then
  say "lavapipe already unpacked: $(cat "$MESA_DIR/VERSION")"
else
  deb="${MESA_DEB:-}"
  if [ -z "$deb" ]; then
    deb="$(ls "$MESA_DIR"/mesa-vulkan-drivers_*.deb 2>/dev/null | head -1 || true)"
  fi
  if [ -z "$deb" ]; then
    # A private apt configuration: its own sources (bookworm-backports only), lists and cache.
    mkdir -p "$APT_DIR/etc" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    cat > "$APT_DIR/etc/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
    cat > "$APT_DIR/etc/apt.conf" <<EOF
Dir::Etc::SourceList "$APT_DIR/etc/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::State::Lists "$APT_DIR/lists";
Dir::Cache "$APT_DIR/cache";
Acquire::Languages "none";
EOF
    export APT_CONFIG="$APT_DIR/etc/apt.conf"
    say "apt-get update (private config, bookworm-backports only)"
    apt-get update -qq
    avail="$(apt-cache madison mesa-vulkan-drivers | awk -F'|' '$3 ~ /backports/ {gsub(/ /,"",$2); print $2}')"
    want="$MESA_VERSION"
    if ! grep -qxF "$want" <<<"$avail"; then
      want="$(head -1 <<<"$avail")"
      [ -n "$want" ] || { echo "setup.sh: no mesa-vulkan-drivers in bookworm-backports" >&2; exit 1; }
      say "WARNING: mesa-vulkan-drivers $MESA_VERSION is gone from backports; using $want"
    fi
    say "downloading mesa-vulkan-drivers=$want (download only, nothing is installed)"
    # Into a folder _apt can write (apt-get download drops privileges to _apt).
    chmod 755 "$APT_DIR" "$APT_DIR/cache"
    dl="$(mktemp -d)"; chmod 777 "$dl"
    (cd "$dl" && apt-get download -qq "mesa-vulkan-drivers=$want")
    mv "$dl"/mesa-vulkan-drivers_*.deb "$MESA_DIR/"; rmdir "$dl"
    deb="$(ls "$MESA_DIR"/mesa-vulkan-drivers_*.deb | head -1)"
    unset APT_CONFIG
  fi
  say "unpacking $(basename "$deb")"
  tmp="$(mktemp -d)"
  dpkg-deb -x "$deb" "$tmp"
  install -m 644 "$tmp/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so" "$LVP"
  api="$(sed -n 's/.*"api_version": *"\([^"]*\)".*/\1/p' "$tmp/usr/share/vulkan/icd.d/lvp_icd.json")"
  echo "${api:-1.4.305}" > "$MESA_DIR/API_VERSION"
  dpkg-deb -f "$deb" Version > "$MESA_DIR/VERSION"
  rm -rf "$tmp"
fi

# Every NEEDED library must resolve from the system, and every symbol too (ldd -r).
if ldd -r "$LVP" 2>&1 | grep -E 'not found|undefined symbol'; then
  echo "setup.sh: $LVP has unresolved dependencies (above)" >&2; exit 1
fi
say "ldd -r $LVP: all $(ldd "$LVP" | wc -l) dependencies and all symbols resolve from the system"

# --- 3. the ICD manifest ----------------------------------------------------------------------
cat > "$ICD" <<EOF
{
    "file_format_version": "1.0.0",
    "ICD": {
        "library_path": "$LVP",
        "api_version": "$(cat "$MESA_DIR/API_VERSION")"
    }
}
EOF
say "wrote $ICD"

# --- 4. npm webgpu (Dawn's dawn.node, prebuilt) ---------------------------------------------------
cd "$HERE"
want_npm="$(node -p 'require("./package.json").dependencies.webgpu')"
have_npm="$(node -p 'try { require("./node_modules/webgpu/package.json").version } catch { "" }')"
if [ "$have_npm" = "$want_npm" ]; then
  say "npm webgpu@$have_npm already installed"
else
  say "npm ci (webgpu@$want_npm)"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi

say "done; disk: $(du -sh "$MESA_DIR" | cut -f1) .mesa25, $(du -sh "$HERE/node_modules" | cut -f1) node_modules"
say "use: node $HERE/compile.mjs DIR; node $HERE/numerics.mjs DIR (dawn.mjs selects $ICD)"
