#!/usr/bin/env bash
# ansible-test needs the collection under ansible_collections/<ns>/<name>; run it on a
# copy of the tracked (and new, unignored) files, outside this git tree (ansible-test
# would otherwise list files with git and skip the ignored copy).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv-sanity
# One copy per run: two checkouts (or worktrees) running sanity at once must not share it.
work=${SANITY_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/minimarket-backup-sanity.XXXXXX")}
dest=$work/ansible_collections/minimarket/backup

# The import test bootstraps pip in a fresh venv with a script from a host we cannot
# reach; put our stand-in where ansible-test looks for its cached copy.
site=$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
pip_version=$(grep -oP "pip='\K[0-9.]+" "$site/_internal/python_requirements.py" | head -n 1)
mkdir -p "$HOME/.ansible/test/cache"
cp "$root/scripts/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

rm -rf "$work"
mkdir -p "$dest"
(cd "$root" && git ls-files -co --exclude-standard -z) | rsync -a --ignore-missing-args --from0 --files-from=- "$root/" "$dest/"
cd "$dest"
status=0
"$venv/bin/ansible-test" sanity --python 3.11 --color no "$@" || status=$?
cd /
[ -n "${SANITY_DIR:-}" ] || rm -rf "$work"
exit "$status"
