#!/usr/bin/env bash
# Provisions the `web` VM: Apache with 7 virtual hosts on ports 8081..8087, each answering
# GET and HEAD / with the body "Backend N" and a newline, and setting no cookie, as in the
# original demo. Idempotent: run it again (`vagrant provision web`) and it changes nothing.
#
# ROOT=DIR writes the files under DIR instead of / and skips what acts on the running system
# (apt-get, systemctl, the final probe): a dry install into a tree, for tests.
set -euo pipefail

readonly ROOT="${ROOT:-}"
readonly SERVERS=7
readonly FIRST_PORT=8081

log() { printf 'provision-web: %s\n' "$*"; }
die() {
    printf 'provision-web: error: %s\n' "$*" >&2
    exit 1
}

live() { [[ -z "$ROOT" ]]; }

# Writes stdin to $1 only when the content differs, so a second run touches nothing.
# Prints the path when it changed.
write_file() {
    local path="$1" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 0
    fi
    install -D -m 0644 "$tmp" "$path"
    rm -f "$tmp"
    log "wrote $path"
}

install_packages() {
    local missing=()
    local pkg
    for pkg in apache2 curl; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)); then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# One site per backend. The Listen line lives in the site's file (not in ports.conf, which the
# package owns), so enabling or disabling the site opens or closes its port.
write_sites() {
    local n port
    for ((n = 1; n <= SERVERS; n++)); do
        port=$((FIRST_PORT + n - 1))
        printf 'Backend %d\n' "$n" | write_file "$ROOT/var/www/backend-$n/index.html"
        write_file "$ROOT/etc/apache2/sites-available/backend-$n.conf" <<EOF
# Backend $n of the stickylb peers demo (vagrant/provision-web.sh).
Listen $port
<VirtualHost *:$port>
    ServerName web
    DocumentRoot /var/www/backend-$n
    <Directory /var/www/backend-$n>
        Require all granted
        Options None
        AllowOverride None
    </Directory>
    ErrorLog \${APACHE_LOG_DIR}/backend-$n-error.log
    CustomLog \${APACHE_LOG_DIR}/backend-$n-access.log combined
</VirtualHost>
EOF
        # What a2ensite does, without needing apache2 installed in a ROOT tree.
        mkdir -p "$ROOT/etc/apache2/sites-enabled"
        ln -sfn "../sites-available/backend-$n.conf" "$ROOT/etc/apache2/sites-enabled/backend-$n.conf"
    done
}

start_apache() {
    apache2ctl configtest
    systemctl enable --quiet apache2
    # restart rather than reload: a first run adds Listen lines.
    systemctl restart apache2
}

# Every backend must answer exactly "Backend N\n" and set no cookie.
probe() {
    local n port body headers
    for ((n = 1; n <= SERVERS; n++)); do
        port=$((FIRST_PORT + n - 1))
        # The trailing x keeps the body's final newline through $(...).
        body="$(curl -fsS "http://127.0.0.1:$port/" && printf x)" ||
            die "backend $n (port $port) does not answer; see journalctl -u apache2"
        body="${body%x}"
        [[ "$body" == "Backend $n"$'\n' ]] ||
            die "backend $n (port $port) answered $(printf %q "$body"), not \"Backend $n\\n\""
        headers="$(curl -fsS -I "http://127.0.0.1:$port/")" ||
            die "backend $n (port $port) does not answer HEAD /"
        if grep -qi '^set-cookie:' <<<"$headers"; then
            die "backend $n (port $port) sets a cookie"
        fi
    done
    log "backends 1..$SERVERS answer on 192.168.33.10:$FIRST_PORT..$((FIRST_PORT + SERVERS - 1))"
}

main() {
    if live; then
        [[ $EUID -eq 0 ]] || die "run as root (Vagrant's shell provisioner does)"
        install_packages
    else
        log "ROOT=$ROOT: installing files only"
    fi
    write_sites
    if live; then
        start_apache
        probe
    fi
}

main "$@"
