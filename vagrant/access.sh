#!/usr/bin/env bash
# access.sh URL FROM TO: one request per session FROM..TO to URL, as the original demo's access scripts
# do, printing "NNNNN - " and the response body ("Backend N"). The session cookie is the MD5
# of "_N" in hex, next to two unrelated cookies:
#   Cookie: c1=1; c2=2; JSESSIONID=<md5 hex of _N>
# access-1.sh and access-2.sh call it with lb-1's and lb-2's forwarded port.
set -euo pipefail

usage() {
    printf 'usage: %s URL FROM TO   (FROM and TO are session numbers, FROM <= TO)\n' "$0" >&2
    exit 2
}

(($# == 3)) || usage
readonly url="$1" from="$2" to="$3"
[[ "$from" =~ ^[0-9]+$ && "$to" =~ ^[0-9]+$ ]] || usage

# md5sum on Linux (and with GNU coreutils on macOS), `md5 -q -s` on macOS as in the original demo.
if command -v md5sum >/dev/null; then
    session_id() { printf '_%s' "$1" | md5sum | cut -d' ' -f1; }
elif command -v md5 >/dev/null; then
    session_id() { md5 -q -s "_$1"; }
else
    printf '%s: needs md5sum or md5\n' "$0" >&2
    exit 1
fi

failed=0
for x in $(seq "$from" "$to"); do
    printf '%05d - ' "$x"
    # A failed request prints curl's error on the same line and the loop goes on.
    curl -sS -H "Cookie: c1=1; c2=2; JSESSIONID=$(session_id "$x")" "$url" || failed=1
done
exit "$failed"
