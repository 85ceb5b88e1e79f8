# Start a PostgreSQL cluster for the ledger tests and export POOLD_TEST_PG_URL.
# Sourced by .ci/run; safe to call when a cluster is already running.
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
  su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_roles WHERE rolname='poold'\"" | grep -q 1 \
    || su postgres -c "psql -q -p $port -c \"CREATE ROLE poold LOGIN SUPERUSER PASSWORD 'poold'\""
  su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_database WHERE datname='poold_test'\"" | grep -q 1 \
    || su postgres -c "createdb -p $port -O poold poold_test"
  export POOLD_TEST_PG_URL="postgresql://poold:poold@127.0.0.1:$port/poold_test"
  echo "PostgreSQL $ver on port $port"
}
