# Shared set-up for the bench scripts (sourced, never run): a free loopback port, running a command
# as the postgres user when root, and a throwaway PostgreSQL 15 cluster on loopback in a temp dir.
#
#   . "$(dirname "$0")/lib.sh"
#   pg_cluster_start [extra postgres -c options...]   # sets pgdir, pgport, pg_url
#   pg_cluster_stop                                   # safe to call twice, or with no cluster
#   spillway_test_keys                                # PostgreSQL counts as production: keys given

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_cluster_start() {
  pgdir=$(mktemp -d /tmp/spillway-bench-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  export PATH="/usr/lib/postgresql/15/bin:$PATH"
  as_pg initdb -D "$pgdir/data" -A trust -U postgres > "$pgdir/initdb.log"
  pgport=$(free_port)
  pg_options="-c listen_addresses=127.0.0.1 -p $pgport -k $pgdir"
  for option in "$@"; do pg_options="$pg_options -c $option"; done
  pg_cluster_resume
  pg_url="postgres://postgres@127.0.0.1:$pgport/postgres"
}

# Starts the cluster again after `pg_cluster_pause` (bench/outage).
pg_cluster_resume() {
  as_pg pg_ctl -D "$pgdir/data" -o "$pg_options" -l "$pgdir/server.log" -w start > /dev/null
}

pg_cluster_pause() {
  as_pg pg_ctl -D "$pgdir/data" -m fast stop > /dev/null
}

pg_cluster_stop() {
  if [ -n "${pgdir:-}" ]; then
    as_pg pg_ctl -D "$pgdir/data" -m fast stop > /dev/null 2>&1 || true
    rm -rf "$pgdir"
    pgdir=
  fi
}

spillway_test_keys() {
  export SPILLWAY_FINGERPRINT_KEY=$(openssl rand -hex 32) SPILLWAY_SEALING_KEY=$(openssl rand -hex 32) \
    SPILLWAY_AUDIT_SIGNING_KEY=$(openssl rand -hex 32)
}
