# shellcheck shell=bash
# Provisioning shared by scripts/run, scripts/test and scripts/bench: installs what is missing and
# starts private PostgreSQL, Synapse and SMTP servers on 127.0.0.1. Sourced, not executed.
# Inputs: PROFILE (run|test|bench) and the *_PORT variables set by the caller.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TCHAP_CACHE:-$HOME/.cache/tchap-portal}
STATE=${TCHAP_STATE:-$ROOT/.run/$PROFILE}
VENV=$CACHE/venv
NODE_DIR=$CACHE/node
SYNAPSE_VERSION=${SYNAPSE_VERSION:-1.163.2}
AIOSMTPD_VERSION=1.4.6
# Bump when the Synapse settings below change: existing state folders get them at next start.
SYNAPSE_CONFIG=3
mkdir -p "$CACHE" "$STATE/log"

PIDS=()
PG_STARTED=""
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ -n "$PG_STARTED" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$STATE/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*; install them (as root: apt-get install $*) and run again"
  say "Installing Debian packages: $*"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$STATE/log/apt.log" 2>&1 \
    || { tail -20 "$STATE/log/apt.log" >&2; die "apt-get install $* failed"; }
}

# What every profile needs; chromium only where browser tests run, haproxy where cluster tests do.
ensure_packages() {
  local missing=()
  pg_bin_dir >/dev/null 2>&1 || missing+=(postgresql)
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  command -v curl >/dev/null || missing+=(curl)
  command -v npm >/dev/null || missing+=(nodejs npm)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  # HAProxy in front of several instances, for the cluster tests (deploy/haproxy.cfg).
  if [ "${NEED_HAPROXY:-}" = 1 ]; then
    haproxy_bin >/dev/null || missing+=(haproxy)
  fi
  if [ "${NEED_BROWSER:-}" = 1 ]; then
    command -v chromium >/dev/null || missing+=(chromium)
    fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
  fi
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  PG_BIN=$(pg_bin_dir)
}

# Debian puts haproxy in /usr/sbin, which a non-root PATH may lack.
haproxy_bin() {
  command -v haproxy 2>/dev/null || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; }
}

pg_bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] && [ -x "$d/initdb" ] || return 1
  echo "$d"
}

# PostgreSQL refuses to run as root: use the postgres system user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A private cluster under $STATE/pg on PG_PORT, unless DATABASE_URL is given.
start_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    say "PostgreSQL: using DATABASE_URL"
    return
  fi
  local data=$STATE/pg sock=$STATE/pg-socket
  mkdir -p "$sock"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    touch "$STATE/log/postgres.log"
    chown postgres "$STATE" "$sock" "$STATE/log/postgres.log"
    # postgres must be able to reach the data folder through the project's parents.
    local d=$STATE; while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    say "PostgreSQL: new private cluster in $data"
    mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_pg "$PG_BIN/initdb" -D "$data" -U portal -A trust -E UTF8 --locale=C.UTF-8 >"$STATE/log/initdb.log" 2>&1 \
      || { cat "$STATE/log/initdb.log" >&2; die "initdb failed"; }
  fi
  # A cluster left running by an interrupted run is stopped first.
  as_pg "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
  as_pg "$PG_BIN/pg_ctl" -D "$data" -w -t 60 -l "$STATE/log/postgres.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $sock -c max_connections=300 -c fsync=${PG_FSYNC:-on} -c shared_buffers=128MB" start >/dev/null \
    || { tail -20 "$STATE/log/postgres.log" >&2; die "PostgreSQL did not start on port $PG_PORT"; }
  PG_STARTED=1
  "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U portal -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='portal'" | grep -q 1 \
    || "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U portal portal
  export DATABASE_URL="postgres://portal@127.0.0.1:$PG_PORT/portal"
  say "PostgreSQL: $DATABASE_URL"
}

# Synapse and aiosmtpd from PyPI in a virtualenv kept in the cache, reused across runs and clones.
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import synapse, aiosmtpd' 2>/dev/null; then
    say "Installing matrix-synapse $SYNAPSE_VERSION and aiosmtpd into $VENV (once)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" "aiosmtpd==$AIOSMTPD_VERSION" \
      >"$STATE/log/pip.log" 2>&1 || { tail -20 "$STATE/log/pip.log" >&2; die "pip install failed"; }
  fi
  export IT_PYTHON=$VENV/bin/python
}

wait_http() { # url seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# A local homeserver on 127.0.0.1:SYNAPSE_PORT, unless PORTAL_MATRIX__HOMESERVER is given.
start_synapse() {
  if [ -n "${PORTAL_MATRIX__HOMESERVER:-}" ]; then
    say "Matrix: using $PORTAL_MATRIX__HOMESERVER"
    return
  fi
  ensure_venv
  local dir=$STATE/synapse
  mkdir -p "$dir"
  if [ ! -f "$dir/homeserver.yaml" ]; then
    say "Synapse: generating a configuration in $dir"
    "$VENV/bin/python" -m synapse.app.homeserver --server-name localhost --config-path "$dir/homeserver.yaml" \
      --data-directory "$dir" --generate-config --report-stats=no >"$STATE/log/synapse-generate.log" 2>&1
  fi
  # Our settings on top of the generated file; applied again when they change (SYNAPSE_CONFIG).
  if [ "$(cat "$dir/portal-config" 2>/dev/null)" != "$SYNAPSE_CONFIG" ]; then
    local secret
    secret=$(sed -n 's/^registration_shared_secret: *//p' "$dir/homeserver.yaml" | tr -d "'\"")
    [ -n "$secret" ] || secret=$(openssl rand -hex 32)
    # Replace the generated listeners and database with loopback + SQLite, Tchap-like defaults.
    "$VENV/bin/python" - "$dir/homeserver.yaml" "$SYNAPSE_PORT" "$secret" <<'PY'
import sys, yaml
path, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = yaml.safe_load(open(path))
c["listeners"] = [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                   "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}]
c["database"] = {"name": "sqlite3", "args": {"database": c["database"]["args"]["database"]}}
c["registration_shared_secret"] = secret
c["enable_registration"] = False
c["encryption_enabled_by_default_for_room_type"] = "invite"
c["suppress_key_server_warning"] = True
c["trusted_key_servers"] = []
c["federation_domain_whitelist"] = []
c["presence"] = {"enabled": False}
c["url_preview_enabled"] = False
c["max_upload_size"] = "20M"
# Like Tchap: forums are published in the room directory (Synapse denies publication by default).
c["room_list_publication_rules"] = [{"action": "allow"}]
big = {"per_second": 10000, "burst_count": 100000}
for k in ["rc_message", "rc_registration", "rc_joins", "rc_invites", "rc_3pid_validation",
          "rc_admin_redaction", "rc_media_create", "rc_delayed_event_mgmt", "rc_room_creation"]:
    c[k] = big
c["rc_login"] = {"address": big, "account": big, "failed_attempts": big}
c["rc_joins"] = {"local": big, "remote": big}
c["rc_invites"] = {"per_room": big, "per_user": big, "per_issuer": big}
c["caches"] = {"global_factor": 0.5}
# Like Tchap: accounts expire (an administrator can set an account's end, as the tests do).
c["account_validity"] = {"enabled": True, "period": "3650d"}
c["log_config"] = path.replace("homeserver.yaml", "log.yaml")
yaml.safe_dump(c, open(path, "w"))
open(path.replace("homeserver.yaml", "log.yaml"), "w").write(
    "version: 1\nformatters:\n  f:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\n"
    "handlers:\n  file:\n    class: logging.FileHandler\n    filename: " + path.replace("homeserver.yaml", "homeserver.log") +
    "\n    formatter: f\nroot:\n  level: WARNING\n  handlers: [file]\ndisable_existing_loggers: false\n")
PY
    echo "$SYNAPSE_CONFIG" >"$dir/portal-config"
  fi
  say "Synapse: starting on http://127.0.0.1:$SYNAPSE_PORT"
  (cd "$dir" && exec "$VENV/bin/python" -m synapse.app.homeserver -c homeserver.yaml >"$STATE/log/synapse.log" 2>&1) &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$SYNAPSE_PORT/_matrix/client/versions" 60 \
    || { tail -30 "$STATE/log/synapse.log" "$dir/homeserver.log" >&2 2>/dev/null; die "Synapse did not answer on port $SYNAPSE_PORT"; }
  export PORTAL_MATRIX__HOMESERVER="http://127.0.0.1:$SYNAPSE_PORT"
  SYNAPSE_SHARED_SECRET=$(sed -n 's/^registration_shared_secret: *//p' "$dir/homeserver.yaml" | tr -d "'\"")
  export SYNAPSE_SHARED_SECRET
}

# register_matrix_user USER PASSWORD [--admin]: idempotent.
register_matrix_user() {
  local out
  out=$("$VENV/bin/register_new_matrix_user" -u "$1" -p "$2" ${3:-"--no-admin"} -k "$SYNAPSE_SHARED_SECRET" \
    "http://127.0.0.1:$SYNAPSE_PORT" 2>&1) || echo "$out" | grep -qi 'taken\|in use' || die "could not create Matrix user $1: $out"
}

# set_matrix_email USER EMAIL: gives a local Synapse user a verified email address (as a Tchap
# administrator does), through Synapse's admin API with a setup administrator. Idempotent.
set_matrix_email() {
  local setup=portal.setup pw
  pw=$(printf '%s' "$SYNAPSE_SHARED_SECRET" | sha256sum | cut -c1-32)
  register_matrix_user "$setup" "$pw" --admin
  "$VENV/bin/python" - "http://127.0.0.1:$SYNAPSE_PORT" "$setup" "$pw" "$1" "$2" <<'PY' || die "could not set the email of $1"
import json, sys, urllib.request
hs, setup, pw, user, email = sys.argv[1:]
def call(method, path, body, token=None):
    req = urllib.request.Request(hs + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)
login = call("POST", "/_matrix/client/v3/login",
             {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": setup}, "password": pw})
server = login["user_id"].split(":", 1)[1]
call("PUT", f"/_synapse/admin/v2/users/@{user}:{server}",
     {"threepids": [{"medium": "email", "address": email}]}, login["access_token"])
call("POST", "/_matrix/client/v3/logout", {}, login["access_token"])
PY
}

# An SMTP server (aiosmtpd) on SMTP_PORT that keeps every mail in a Maildir a person can read.
start_smtp() {
  ensure_venv
  # Maildir folders, made here: aiosmtpd only creates them for a folder that does not exist yet.
  mkdir -p "$STATE/mail/new" "$STATE/mail/cur" "$STATE/mail/tmp"
  "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$STATE/mail" \
    >"$STATE/log/smtp.log" 2>&1 &
  PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null && break
    sleep 0.1
  done
  export PORTAL_MAIL__TRANSPORT=smtp PORTAL_MAIL__SMTP_HOST=127.0.0.1 PORTAL_MAIL__SMTP_PORT=$SMTP_PORT PORTAL_MAIL__SMTP_SECURITY=none
}

# The DSFR (CSS, fonts, icons) into public/dsfr, and the browser-test tools into the cache.
vendor_assets() {
  "$ROOT/scripts/vendor" ${NEED_BROWSER:+--with-browser-tools}
}
