# Sourced by scripts/test and scripts/cluster: make sure the services the
# tests and the local cluster need are running, installing them from
# Debian's packages where missing. Each function is idempotent.

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 120); do
        port_open "$port" && return 0
        sleep 0.5
    done
    echo "error: $what did not come up on port $port" >&2
    return 1
}

ensure_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
    if ! port_open 6379; then
        echo "starting redis-server on 127.0.0.1:6379"
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/test.log
        wait_port 6379 redis
    fi
}

ensure_rabbitmq() {
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    if ! port_open 5672; then
        echo "starting rabbitmq-server on 127.0.0.1:5672"
        rabbitmq-server -detached
        wait_port 5672 rabbitmq
    fi
}

ensure_haproxy() {
    command -v haproxy >/dev/null || apt_install haproxy
}

ensure_chromium() {
    command -v chromium >/dev/null || apt_install chromium
}
