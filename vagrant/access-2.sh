#!/usr/bin/env bash
# ./access-2.sh FROM TO: sessions FROM..TO through lb-2 (guest port 80, forwarded to 9080;
# LB2_URL overrides the address).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/access.sh" "${LB2_URL:-http://localhost:9080}" "$@"
