#!/usr/bin/env bash
# Installs Panda on a device as a systemd service:
#   release build → /usr/local/bin/panda
#   models (panda models install) → /usr/local/share/panda/models
#   config/panda.toml → /etc/panda/panda.toml (kept if it exists: your edits survive)
#   systemd/panda.service → /etc/systemd/system/, udev/99-panda-audio.rules → /etc/udev/rules.d/
#   a `panda` system user in the `audio` group; state in /var/lib/panda (StateDirectory)
# then checks the install with `panda doctor` and enables + starts the service.
#
# usage: sudo scripts/install.sh [--no-start]   (run from the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

START=1
for a in "$@"; do
  case "$a" in
    --no-start) START=0 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $a" >&2; exit 64 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo scripts/install.sh)" >&2
  exit 77
fi

PREFIX=/usr/local
MODELS="$PREFIX/share/panda/models"

echo "==> system packages and release build"
BUILD_PROFILE=release scripts/setup.sh --no-models

echo "==> binary"
install -D -m 0755 target/release/panda "$PREFIX/bin/panda"

echo "==> models into $MODELS"
install -d -m 0755 "$MODELS"
PANDA_CACHE_DIR="${PANDA_CACHE_DIR:-/var/cache/panda}" "$PREFIX/bin/panda" models install --dir "$MODELS"
"$PREFIX/bin/panda" models verify --dir "$MODELS"

echo "==> user, configuration, unit, udev rules"
if ! id panda >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/panda --no-create-home --shell /usr/sbin/nologin \
    --groups audio --user-group panda
fi
usermod -a -G audio panda
install -d -m 0755 /etc/panda
if [ ! -e /etc/panda/panda.toml ]; then
  install -m 0644 config/panda.toml /etc/panda/panda.toml
  # Installed paths, so the file works on its own too.
  sed -i "s#^dir = \"models\"#dir = \"$MODELS\"#; s#^dir = \"state\"#dir = \"/var/lib/panda\"#" /etc/panda/panda.toml
else
  echo "    /etc/panda/panda.toml exists: kept"
fi
PANDA_MODELS__DIR="$MODELS" "$PREFIX/bin/panda" check-config /etc/panda/panda.toml >/dev/null
install -m 0644 systemd/panda.service /etc/systemd/system/panda.service
install -m 0644 udev/99-panda-audio.rules /etc/udev/rules.d/99-panda-audio.rules
install -D -m 0644 README.md "$PREFIX/share/doc/panda/README.md"
if command -v udevadm >/dev/null && [ -d /run/udev ]; then
  udevadm control --reload && udevadm trigger --subsystem-match=sound || true
fi

echo "==> checks"
PANDA_MODELS__DIR="$MODELS" PANDA_STATE__DIR=/var/lib/panda "$PREFIX/bin/panda" doctor || true

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable panda.service
  if [ "$START" = 1 ]; then
    systemctl restart panda.service
    systemctl --no-pager status panda.service || true
  fi
else
  echo "    systemd is not running here: start it with /usr/local/bin/panda run"
fi
echo "Panda installed. Status page: http://127.0.0.1:8080/ (see [web] in /etc/panda/panda.toml)"
