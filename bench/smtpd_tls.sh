#!/usr/bin/env bash
# A private Postfix smtpd with STARTTLS in front of a sink, for bench/send.py's TLS scenario.
#
#   bench/smtpd_tls.sh setup PORT SINK_PORT   # config + certificates under bench/out/postfix-tls
#   bench/smtpd_tls.sh run                    # Postfix master in the foreground (Ctrl-C/TERM stops)
#   bench/smtpd_tls.sh stop                   # stop a master left running by `run`
#
# smtpd listens on 127.0.0.1:PORT only, offers STARTTLS (TLS 1.2+) with a certificate signed by
# a throwaway CA (bench/out/postfix-tls/ca.pem, for a campaign's `ca_file`), and hands every SMTP
# transaction to the sink on 127.0.0.1:SINK_PORT through `smtpd_proxy_filter` (before-queue
# proxy): nothing is queued, so this measures STARTTLS + smtpd, not Postfix's disk queue.
# Needs root (Postfix's master) and the Debian `postfix` package; the system daemon is not used.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${BLAST_BENCH_POSTFIX_DIR:-$HERE/out/postfix-tls}"
MASTER="$(command -v postfix >/dev/null && postconf -h daemon_directory 2>/dev/null ||
    echo /usr/lib/postfix/sbin)/master"
[ -x "$MASTER" ] || MASTER=/usr/lib/postfix/sbin/master

setup() {
    local port="$1" sink_port="$2"
    mkdir -p "$DIR/etc" "$DIR/spool" "$DIR/data"
    if [ ! -s "$DIR/ca.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=blast bench CA" \
            -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
            >"$DIR/server.ext"
        openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
            -CAcreateserial -days 30 -extfile "$DIR/server.ext" -out "$DIR/server.pem" 2>/dev/null
        chmod 600 "$DIR/server.key" "$DIR/ca.key"
    fi
    cat >"$DIR/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $DIR/spool
data_directory = $DIR/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-tls.localhost
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_proxy_filter = 127.0.0.1:$sink_port
smtpd_proxy_timeout = 60s
smtpd_tls_security_level = may
smtpd_tls_cert_file = $DIR/server.pem
smtpd_tls_key_file = $DIR/server.key
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 0
default_process_limit = 400
maillog_file_prefixes = $DIR
maillog_file = $DIR/maillog
EOF
    cat >"$DIR/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - 400 smtpd
anvil     unix  -       -       n       -       1       anvil
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
proxymap  unix  -       -       n       -       -       proxymap
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    # The spool layout master expects (`postfix check` refuses a config dir that the default
    # main.cf does not list in alternate_config_directories, so do it by hand).
    mkdir -p "$DIR/spool/pid" "$DIR/spool/public" "$DIR/spool/private"
    chown postfix "$DIR/spool/public" "$DIR/spool/private" "$DIR/data"
    chgrp postdrop "$DIR/spool/public"
    chmod 710 "$DIR/spool/public"
    chmod 700 "$DIR/spool/private"
    : >"$DIR/maillog"
    echo "$DIR"
}

case "${1:-}" in
setup) setup "${2:?PORT}" "${3:?SINK_PORT}" ;;
run) exec "$MASTER" -d -c "$DIR/etc" ;;
stop) [ -s "$DIR/spool/pid/master.pid" ] && kill "$(tr -d ' ' <"$DIR/spool/pid/master.pid")" || true ;;
*)
    echo "usage: $0 setup PORT SINK_PORT | run | stop" >&2
    exit 2
    ;;
esac
