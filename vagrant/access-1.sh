#!/usr/bin/env bash
# ./access-1.sh FROM TO: sessions FROM..TO through lb-1 (guest port 80, forwarded to 8080;
# LB1_URL overrides the address).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/access.sh" "${LB1_URL:-http://localhost:8080}" "$@"
