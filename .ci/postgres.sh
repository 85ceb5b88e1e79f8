# Start a PostgreSQL cluster for the ledger tests and export POOLD_TEST_PG_URL.
# Sourced by .ci/run; safe to call when a cluster is already running.
#
# What it leaves behind (README "Two commands" says so too): the Debian cluster running on
# 127.0.0.1 (Debian's default listen address is localhost), a login role `poold` with password
# `poold` that is NOT a superuser, and a database `poold_test` owned by that role. The ledger
# tests create and drop their own schemas inside `poold_test`, which the owner may do.
start_postgres() {
  local ver
  ver=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    if ! pg_lsclusters -h | grep -q .; then
      pg_createcluster "$ver" main >/dev/null
    fi
    pg_ctlcluster "$ver" main start
  fi
  local port
  port=$(pg_lsclusters -h | awk '$4=="online"{print $3; exit}')
  local psql="psql -q -v ON_ERROR_STOP=1 -p $port"
  if su postgres -c "$psql -tc \"SELECT 1 FROM pg_roles WHERE rolname='poold'\"" | grep -q 1; then
    # a role left by an older run may be a superuser: the tests do not need that
    su postgres -c "$psql -c \"ALTER ROLE poold NOSUPERUSER NOCREATEDB NOCREATEROLE LOGIN\""
  else
    su postgres -c "$psql -c \"CREATE ROLE poold LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'poold'\""
  fi
  su postgres -c "$psql -tc \"SELECT 1 FROM pg_database WHERE datname='poold_test'\"" | grep -q 1 \
    || su postgres -c "createdb -p $port -O poold poold_test"
  su postgres -c "$psql -c \"ALTER DATABASE poold_test OWNER TO poold\""
  export POOLD_TEST_PG_URL="postgresql://poold:poold@127.0.0.1:$port/poold_test"
  echo "PostgreSQL $ver on port $port: role poold (not a superuser) owns database poold_test"
}
