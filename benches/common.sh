# Shared by the benchmark scripts (sourced, not run): free ports, waiting for a listener,
# and the nginx pieces every comparison uses. They expect `work` (a scratch directory),
# `NGINX`, `UP`, `TOK`, `NGX` and a `pids` array (killed by the caller's cleanup).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 500); do curl -s -o /dev/null "$1" && return 0; sleep 0.02; done; echo "not up: $1" >&2; return 1; }

# Starts an nginx in directory $1 with $2 workers and $3 inside its `http { }`; its
# master's pid is `$!` afterwards (and in `pids`).
start_nginx() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
$3
}
CONF
  "$NGINX" -c "$1/nginx.conf" -p "$1" -g 'daemon off;' & pids+=($!)
}

# The upstream ($UP, "ok") and the token endpoint ($TOK, an hour-long token) in one nginx
# with one worker; $1: more `server { … }` lines.
start_nginx_upstream() {
  start_nginx "$work/up" 1 "  server { listen 127.0.0.1:$UP; location / { return 200 \"ok\n\"; } }
  server { listen 127.0.0.1:$TOK; location / { default_type application/json;
    return 200 '{\"access_token\":\"bench-token-long\",\"token_type\":\"Bearer\",\"expires_in\":3600}'; } }
${1:-}"
  wait_http "http://127.0.0.1:$UP/"
}

# nginx as the static-token proxy on $NGX in front of $UP, with $1 workers; its master's
# pid in NGX_MASTER.
start_nginx_proxy() {
  start_nginx "$work/px" "$1" "  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGX; location / {
    proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";
    proxy_set_header Authorization \"Bearer static-benchmark-token\"; } }"
  NGX_MASTER=$!
  wait_http "http://127.0.0.1:$NGX/"
}
