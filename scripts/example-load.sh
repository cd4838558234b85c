# The example under load, as scripts/figures.sh and scripts/profile-example.sh
# drive it (sourced, not run). Expects `work` (a scratch directory).
#
#   example_load_script                 writes $work/post.lua: wrk POSTs one
#                                       GraphQL query with a session cookie
#   example_start on|off PORT [WRAP...] starts the release example (WRAP...
#                                       before it: taskset, valgrind) with
#                                       quotas that never refuse; sets
#                                       example_pid; waits for /healthz
#   example_stop                        stops it
#   example_wrk_ok on|off FILE          fails if wrk saw a non-2xx answer

example_bin=target/release/examples/graphql
example_secret="load-secret-of-at-least-32-bytes!!!!"

example_load_script() {
  local token
  token=$(TOLLGATE_SECRET="$example_secret" "$example_bin" mint load-user)
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"query":"{ anonymousFeed(first: 1) { title } }"}'
wrk.headers["content-type"] = "application/json"
wrk.headers["cookie"] = "theme=dark; da3=$token"
LUA
}

example_start() {
  local layers=$1 port=$2
  shift 2
  TOLLGATE_LAYERS="$layers" TOLLGATE_ADDR="127.0.0.1:$port" TOLLGATE_SECRET="$example_secret" \
    TOLLGATE_IP_PER_MIN=4000000000 TOLLGATE_IP_BURST=4000000000 \
    TOLLGATE_USER_PER_MIN=4000000000 TOLLGATE_USER_BURST=4000000000 \
    TOLLGATE_COST_PER_MIN=4000000000 TOLLGATE_COST_BURST=4000000000 RUST_LOG=error \
    "$@" "$example_bin" > "$work/server-$layers.log" 2>&1 &
  example_pid=$!
  # up to 60 s: under valgrind the example starts slowly
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the example ($layers) did not answer on port $port:" >&2
  cat "$work/server-$layers.log" >&2
  exit 1
}

example_stop() {
  kill "$example_pid" 2>/dev/null || true
  wait "$example_pid" 2>/dev/null || true
}

example_wrk_ok() {
  if grep -q "Non-2xx" "$2"; then
    echo "wrk saw non-2xx responses ($1):" >&2
    cat "$2" >&2
    exit 1
  fi
}
