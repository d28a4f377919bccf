# shellcheck shell=bash
# Config generators: the backend nginx and the three proxies under test.
# Every file goes into $BENCH_TMP. The proxies are configured to do the same
# work: HTTP/1.1 keep-alive to the backend, Host kept, X-Forwarded-For/-Proto/
# -Host set, no logging, request and response bodies streamed through memory.

SMALL_BODY="ringproxy bench: small response body, 64 bytes of text........"

# Routing scenarios (compare.sh sets ROUTES): "" none, "1" one prefix route (/small),
# "1k" 1,000 exact hosts + 1,000 prefix routes (one of them /small) + 10 regexes. Every
# proxy routes /small to the backend by its prefix route and answers anything no route
# matches itself (404/503), so the correctness check proves the route was used.
ROUTES=""
# Rate-limit scenario (compare.sh sets LIMIT=1 with ROUTES=1): the prefix route /small also
# passes one per-client-address limit so high it never refuses (ringproxy [rate_limits], nginx
# limit_req, HAProxy a stick table), to measure what checking a limit costs.
LIMIT=""
NEVER_RATE=1000000
ROUTE_COUNT=1000
ROUTE_REGEXES=10

core_list() { # core_list "0-1,3" -> "0 1 3"
    local part parts=() out=() c
    IFS=, read -r -a parts <<<"$1"
    for part in "${parts[@]}"; do
        for ((c = ${part%-*}; c <= ${part#*-}; c++)); do out+=("$c"); done
    done
    echo "${out[*]}"
}

# nginx worker_cpu_affinity: one bit mask per worker, worker i on the i-th core.
nginx_affinity() { # nginx_affinity CORES
    local c i mask masks=()
    for c in $(core_list "$1"); do
        mask=1
        for ((i = 0; i < c; i++)); do mask+=0; done
        masks+=("$mask")
    done
    echo "${masks[*]}"
}

# Settings shared by nginx instances so nothing is written outside $BENCH_TMP.
nginx_common() { # nginx_common NAME
    local d="$BENCH_TMP/$1"
    mkdir -p "$d"
    cat <<EOF
user root;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile $NOFILE;
EOF
}

nginx_http_common() { # nginx_http_common NAME
    local d="$BENCH_TMP/$1"
    cat <<EOF
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $d/client_body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    sendfile on;
    tcp_nopush on;
EOF
}

# Backend: /small (64-byte return), /16k and /1m (static files), /sink (reads
# a POST body completely before answering 200: the mirror module with
# mirror_request_body reads the whole body in the preaccess phase; the static
# handler then refuses POST with 405, which error_page turns into 200 + ok.txt),
# /status (stub_status, used to count upstream connections opened), /health.
write_backend_conf() { # write_backend_conf PORT WORKERS
    local port=$1 workers=$2 www="$BENCH_TMP/www"
    mkdir -p "$www"
    head -c 16384 /dev/urandom >"$www/16k"
    head -c 1048576 /dev/urandom >"$www/1m"
    printf 'ok\n' >"$www/ok.txt"
    {
        nginx_common backend
        cat <<EOF
worker_processes $workers;
events { worker_connections $((NOFILE - 100)); }
http {
$(nginx_http_common backend)
    server {
        listen 127.0.0.1:$port backlog=4096;
        root $www;
        location = /small { return 200 "$SMALL_BODY"; }
        location = /16k { }
        location = /1m { }
        location = /sink {
            client_max_body_size 0;
            client_body_buffer_size 2m;
            mirror /_mirror;
            mirror_request_body on;
            alias $www/ok.txt;
            error_page 405 =200 /ok.txt;
        }
        location = /_mirror { internal; return 204; }
        location = /ok.txt { }
        location = /status { stub_status; }
        location = /health { return 200 "ok\n"; }
    }
}
EOF
    } >"$BENCH_TMP/backend.conf"
}

# The TLS scenarios' certificate, the same for all three proxies: ECDSA P-256, self-signed,
# for localhost and 127.0.0.1. HAProxy wants certificate and key in one file.
TLS_DIR=""
make_bench_cert() {
    TLS_DIR="$BENCH_TMP/tls"
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null || die "openssl could not make the bench certificate"
    cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/combined.pem"
}

# The proxy location every nginx server block shares.

# nginx as reverse proxy. Defaults that would make it spool to disk or close
# client connections every 1000 requests are changed (documented in README).
# TLS on TLS_PORT: TLS 1.3 only, X25519 only, session tickets on (nginx's default).
write_nginx_proxy_conf() { # write_nginx_proxy_conf PORT BACKEND_PORT WORKERS CORES TLS_PORT
    local port=$1 backend=$2 workers=$3 cores=$4 tls_port=$5
    {
        nginx_common nginx
        cat <<EOF
worker_processes $workers;
worker_cpu_affinity $(nginx_affinity "$cores");
events { worker_connections $((NOFILE - 100)); }
http {
$(nginx_http_common nginx)
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering on;
    proxy_buffer_size 16k;
    proxy_buffers 64 16k;
    proxy_busy_buffers_size 64k;
    proxy_max_temp_file_size 0;
    upstream backend {
        server 127.0.0.1:$backend;
        keepalive $UPSTREAM_IDLE;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$http_host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header X-Forwarded-Host \$http_host;
$(nginx_servers "$port")
    server {
        listen 127.0.0.1:$tls_port ssl backlog=4096;
        ssl_certificate $TLS_DIR/cert.pem;
        ssl_certificate_key $TLS_DIR/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_session_tickets on;
        location / { proxy_pass http://backend; }
    }
}
EOF
    } >"$BENCH_TMP/nginx.conf"
}

# The proxy's server blocks: one location / without routes; with them, the same routing as
# ringproxy's: server_name blocks for the exact hosts, ^~ prefix locations (a prefix beats a
# regex, as in ringproxy), regex locations, and 404 for the rest.
nginx_servers() { # nginx_servers PORT
    local port=$1 i
    if [[ -z "$ROUTES" ]]; then
        printf '    server {\n        listen 127.0.0.1:%s backlog=4096;\n        location / { proxy_pass http://backend; }\n    }\n' "$port"
        return
    fi
    printf '    server_names_hash_max_size 4096;\n    server_names_hash_bucket_size 128;\n'
    [[ -z "$LIMIT" ]] || printf '    limit_req_zone $binary_remote_addr zone=never:10m rate=%sr/s;\n    limit_req_status 429;\n' "$NEVER_RATE"
    printf '    server {\n        listen 127.0.0.1:%s default_server backlog=4096;\n' "$port"
    if [[ -n "$LIMIT" ]]; then
        printf '        location ^~ /small { limit_req zone=never burst=%s nodelay; proxy_pass http://backend; }\n' "$NEVER_RATE"
    else
        printf '        location ^~ /small { proxy_pass http://backend; }\n'
    fi
    if [[ "$ROUTES" == 1k ]]; then
        for ((i = 1; i < ROUTE_COUNT; i++)); do
            printf '        location ^~ /p%d/ { proxy_pass http://backend; }\n' "$i"
        done
        for ((i = 0; i < ROUTE_REGEXES; i++)); do
            printf '        location ~ ^/r%d/[0-9]+$ { proxy_pass http://backend; }\n' "$i"
        done
    fi
    printf '        location / { return 404; }\n    }\n'
    if [[ "$ROUTES" == 1k ]]; then
        for ((i = 0; i < ROUTE_COUNT; i++)); do
            printf '    server { listen 127.0.0.1:%s; server_name h%d.bench.example; location / { proxy_pass http://backend; } }\n' "$port" "$i"
        done
    fi
}

write_haproxy_conf() { # write_haproxy_conf PORT BACKEND_PORT THREADS CORES TLS_PORT
    local port=$1 backend=$2 threads=$3 cores=$4 tls_port=$5
    cat >"$BENCH_TMP/haproxy.cfg" <<EOF
global
    nbthread $threads
    cpu-map auto:1/1-$threads $(core_list "$cores")
    # HAProxy wants 2 fds per connection; when the hard limit cannot be raised
    # (no CAP_SYS_RESOURCE) "no strict-limits" lets it start with what there is.
    ulimit-n $NOFILE
    maxconn $((NOFILE - 1000))
    no strict-limits
    pidfile $BENCH_TMP/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port backlog 4096
    maxconn $((NOFILE - 1000))
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
$(haproxy_routing)

# TLS 1.3 only, X25519 only; session tickets are on by default.
frontend fe_tls
    bind 127.0.0.1:$tls_port ssl crt $TLS_DIR/combined.pem ssl-min-ver TLSv1.3 curves X25519 alpn http/1.1 backlog 4096
    maxconn $((NOFILE - 1000))
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be

backend be
    server s1 127.0.0.1:$backend
EOF
}

# The frontend's choice of backend: default_backend without routes; with them, the same
# routing as ringproxy's through maps (exact hosts, then path prefixes) and path_reg ACLs,
# and no default backend (503 for the rest).
haproxy_routing() {
    local i
    if [[ -z "$ROUTES" ]]; then
        printf '    default_backend be\n'
        return
    fi
    if [[ "$ROUTES" == 1 ]]; then
        if [[ -n "$LIMIT" ]]; then
            printf '    stick-table type ip size 100k expire 10s store http_req_rate(1s)\n'
            printf '    http-request track-sc0 src\n'
            printf '    http-request deny deny_status 429 if { sc_http_req_rate(0) gt %s }\n' "$NEVER_RATE"
        fi
        printf '    use_backend be if { path_beg /small }\n'
        return
    fi
    for ((i = 0; i < ROUTE_COUNT; i++)); do printf 'h%d.bench.example be\n' "$i"; done >"$BENCH_TMP/hosts.map"
    { printf '/small be\n'; for ((i = 1; i < ROUTE_COUNT; i++)); do printf '/p%d/ be\n' "$i"; done; } \
        >"$BENCH_TMP/paths.map"
    printf '    use_backend %%[req.hdr(host),field(1,:),lower,map(%s)] if { req.hdr(host),field(1,:),lower,map(%s) -m found }\n' \
        "$BENCH_TMP/hosts.map" "$BENCH_TMP/hosts.map"
    printf '    use_backend %%[path,map_beg(%s)] if { path,map_beg(%s) -m found }\n' "$BENCH_TMP/paths.map" "$BENCH_TMP/paths.map"
    for ((i = 0; i < ROUTE_REGEXES; i++)); do
        printf '    use_backend be if { path_reg ^/r%d/[0-9]+$ }\n' "$i"
    done
}

# TLS: 1.3 only, X25519 only (BENCH_RINGPROXY_TLS_GROUPS overrides it, to measure the
# post-quantum X25519MLKEM768), session tickets on (the default).
write_ringproxy_conf() { # write_ringproxy_conf PORT BACKEND_PORT [TLS_PORT]
    local port=$1 backend=$2 tls_port=${3:-}
    cat >"$BENCH_TMP/ringproxy.toml" <<EOF
[server]
host = "127.0.0.1"
port = $port
workers = "auto"
pin_cores = true

$([[ -n "$ROUTES" ]] || printf '[[backends]]\nurl = "http://127.0.0.1:%s"\n' "$backend")

[health_checks]
enabled = false

[logging]
level = "warn"
format = "text"
access_log = false

[upstream]
max_idle_per_backend = $UPSTREAM_IDLE

EOF
    # No TLS port: no [tls] block (bench/ab.sh without TLS scenarios, so builds from before TLS
    # can be compared).
    [[ -z "$tls_port" ]] || cat >>"$BENCH_TMP/ringproxy.toml" <<EOF

[tls]
port = $tls_port
min_version = "1.3"
key_exchange_groups = ["${BENCH_RINGPROXY_TLS_GROUPS:-X25519}"]
strict_sni = false

[[tls.certificates]]
cert = "$TLS_DIR/cert.pem"
key = "$TLS_DIR/key.pem"
EOF
    ringproxy_routes "$backend" >>"$BENCH_TMP/ringproxy.toml"
}

# With routes, the backend is the group "app" (not "default": a request no route matches gets
# 404) and /small reaches it by a prefix route; "1k" adds 1,000 exact hosts, 999 more prefix
# routes and 10 regexes.
ringproxy_routes() { # ringproxy_routes BACKEND_PORT
    local backend=$1 i
    [[ -n "$ROUTES" ]] || return 0
    printf '\n[upstreams.app]\nbackends = [{ url = "http://127.0.0.1:%s" }]\n' "$backend"
    printf '\n[[routes]]\npath_prefix = "/small"\nupstream = "app"\n'
    if [[ -n "$LIMIT" ]]; then
        printf 'rate_limits = ["never"]\n\n[rate_limits.never]\nkey = "client_ip"\n'
        printf 'requests_per_second = %s\nburst = %s\n' "$NEVER_RATE" "$NEVER_RATE"
    fi
    [[ "$ROUTES" == 1k ]] || return 0
    for ((i = 0; i < ROUTE_COUNT; i++)); do
        printf '[[routes]]\nhosts = ["h%d.bench.example"]\nupstream = "app"\n' "$i"
    done
    for ((i = 1; i < ROUTE_COUNT; i++)); do
        printf '[[routes]]\npath_prefix = "/p%d/"\nupstream = "app"\n' "$i"
    done
    for ((i = 0; i < ROUTE_REGEXES; i++)); do
        printf '[[routes]]\npath_regex = "^/r%d/[0-9]+$"\nupstream = "app"\n' "$i"
    done
}
