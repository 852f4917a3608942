#!/usr/bin/env bash
# make demo: the collection's main job on the development environment of this machine.
#   stack up with seeded data -> weekly volume backup (Redis, Prometheus, Grafana online) -> the
#   weekly verification (services started on the restored volumes in a scratch project and asked)
#   -> a day of business -> nightly database backup -> snapshot -> disaster (database dropped,
#   volumes wiped, containers removed) -> recover_full.yml (ends by asking each service) ->
#   compare with the snapshot -> short report. Exit status 0 only if the recovered stack equals
#   the pre-disaster one, every service runs and every service answered with its backed-up data.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export ANSIBLE_CONFIG="$REPO/ansible.cfg" ANSIBLE_NOCOLOR=1
export MINIMARKET_SEED_ROWS=${MINIMARKET_SEED_ROWS:-2000}
PLAY=("$REPO/.venv/bin/ansible-playbook" -i inventories/development)
SNAPSHOT=("$REPO/.venv/bin/python" molecule/shared/stack_snapshot.py)
WORK=$(mktemp -d)
LOG="$WORK/demo.log"
trap 'rm -rf "$WORK"' EXIT

step() { echo "demo: $*"; }
run() {
  if ! "$@" >>"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "demo: FAILED: $*" >&2
    exit 1
  fi
}
last() { grep -E "$1" "$LOG" | tail -n 1 | sed -e 's/^ *"msg": "//' -e 's/"$//'; }

step "1/8 stack up and seeded (testenv/stack.sh up)"
run testenv/stack.sh up
run "${PLAY[@]}" molecule/shared/business.yml -e business_action=reset
step "2/8 weekly volume backup (playbooks/backup_volumes.yml)"
run "${PLAY[@]}" playbooks/backup_volumes.yml
echo "demo:   $(last '"msg": "wrote ')"
step "3/8 weekly verification (playbooks/verify_backups.yml): services started on the restored volumes and asked"
run "${PLAY[@]}" playbooks/verify_backups.yml -e backup_verify_database=false
report=$(find /var/backups/minimarket-dev/reports -name 'verify_development_*.json' | sort | tail -n 1)
"$REPO/.venv/bin/python" -c '
import json, sys
report = json.load(open(sys.argv[1]))
print("demo:   scratch project %s (removed):" % report["services"]["project"])
for service in report["services"]["services"]:
    print("demo:     %s %s: %s" % (service["service"], "ok" if service["ok"] else "FAILED", "; ".join(service["checks"])))
' "$report" | tee -a "$LOG"
step "4/8 a day of business, then the nightly database backup (playbooks/backup_database.yml)"
run "${PLAY[@]}" molecule/shared/business.yml -e business_action=write
run "${PLAY[@]}" playbooks/backup_database.yml
run "${SNAPSHOT[@]}" save "$WORK/before.json"
step "5/8 disaster: database dropped, every volume wiped, containers removed"
run "${PLAY[@]}" molecule/shared/disaster.yml
step "6/8 recovery (playbooks/recover_full.yml -e confirm=yes)"
run "${PLAY[@]}" playbooks/recover_full.yml -e confirm=yes
step "7/8 compare with the state before the disaster"
"${SNAPSHOT[@]}" compare "$WORK/before.json" | tee -a "$LOG" | sed 's/^/demo:   /'
compared=${PIPESTATUS[0]}
step "8/8 report"
echo "demo:   $(last '"msg": "stack inventario-retail')"
echo "demo:   $(last '"msg": "healthy:')"
echo "demo:   $(last '"msg": "services answered:')"
echo "demo:   services: $(docker ps --filter label=com.docker.compose.project=inventario-retail --format '{{.Label "com.docker.compose.service"}}' | sort | tr '\n' ' ')"
echo "demo:   backups: $(find /var/backups/minimarket-dev/database /var/backups/minimarket-dev/volumes -name '*.tar.gz' | wc -l) archives under /var/backups/minimarket-dev"
if [ "$compared" != 0 ]; then
  echo "demo: FAILED: the recovered stack differs from the pre-disaster state" >&2
  exit 1
fi
step "done: the whole stack was recovered and equals its pre-disaster state"
