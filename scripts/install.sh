#!/usr/bin/env bash
# Puts scmz on PATH: sets up what is missing (scripts/setup.sh), builds the release binaries and
# installs `scmz` and `scmz-engine` side by side in PREFIX/bin (default ~/.local), with shell
# completions (bash, zsh, fish) and manual pages. Idempotent; `--uninstall` removes exactly what
# it installed (listed in PREFIX/share/scmz/installed-files).
#
#   scripts/install.sh [--prefix DIR] [--from DIR] [--uninstall]
#
# --from DIR installs the binaries already built in DIR (e.g. target/debug) instead of building.
# The installed engine finds libtorch through its rpath, in the venv scripts/setup.sh made
# (~/.cache/scmz/venv): that venv must stay; the clone may go.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

PREFIX="$HOME/.local"
FROM=""
UNINSTALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --from) FROM="${2:?--from needs a folder}"; shift 2 ;;
    --from=*) FROM="${1#*=}"; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Relative folders mean the caller's folder; the prefix is named by its real path (no links).
PREFIX="$(realpath -m -- "$PREFIX")"
if [ -n "$FROM" ]; then FROM="$(cd "$FROM" && pwd)"; fi
cd "$ROOT"
LIST="$PREFIX/share/scmz/installed-files"
say() { echo "install: $*" >&2; }

# Folders an install creates, listed (with a trailing /) after its files so that an uninstall
# removes them again when empty, and no folder that was there before.
created=()
ensure_dir() { # ensure_dir DIR: mkdir -p, remembering each folder it makes
  local d="$1" missing=()
  while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d="$(dirname "$d")"; done
  for d in "${missing[@]}"; do mkdir -- "$d"; created+=("$d/"); done
}

# Removes what a previous install listed: plain files, then the folders it made, if empty.
# An entry is followed only if it is its own real path below PREFIX: an edited list naming
# `..`, a link (or a path through a linked folder) or anything outside removes nothing there.
remove_listed() {
  [ -f "$LIST" ] || return 0
  local f folders=()
  while IFS= read -r f; do
    local path="${f%/}"
    if [ "$f" != "$path" ] && [ "$(realpath -m -- "$path" 2>/dev/null)" = "$path" ] &&
      { [ "$path" = "$PREFIX" ] || [ "${PREFIX#"$path"/}" != "$PREFIX" ]; }; then
      folders=("$path" "${folders[@]}") # the prefix or a folder above it that the install made
    elif [ "$(realpath -m -- "$path" 2>/dev/null)" != "$path" ] || [ "${path#"$PREFIX"/}" = "$path" ]; then
      say "skipping $f in $LIST (not a plain path below $PREFIX)"
    elif [ "$f" != "$path" ]; then
      folders=("$path" "${folders[@]}")
    elif [ -f "$path" ] && [ ! -L "$path" ]; then
      rm -f -- "$path"
    fi
  done < "$LIST"
  rm -f -- "$LIST"
  for f in "${folders[@]}"; do rmdir -- "$f" 2>/dev/null || true; done
}

if [ "$UNINSTALL" = 1 ]; then
  if [ ! -f "$LIST" ]; then say "nothing installed in $PREFIX (no $LIST)"; exit 0; fi
  remove_listed
  say "removed scmz from $PREFIX"
  exit 0
fi
# Every file goes below the prefix by its real path: a folder in it that is a link (a dotfile
# manager's ~/.local/share) would take files elsewhere, where an uninstall may not follow.
for d in bin share/scmz share/bash-completion/completions share/zsh/site-functions \
  share/fish/vendor_completions.d share/man/man1; do
  real="$(realpath -m -- "$PREFIX/$d")"
  if [ "$real" != "$PREFIX/$d" ]; then
    say "$PREFIX/$d leads to $real through a symbolic link, where an uninstall could not follow; choose a --prefix whose folders are not links"
    exit 1
  fi
done

ensure_dir "$PREFIX"

if [ -z "$FROM" ]; then
  scripts/setup.sh
  say "building the release binaries (the first time: several minutes)"
  cargo build --release --locked --bins
  FROM="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
fi
for b in scmz scmz-engine; do
  [ -x "$FROM/$b" ] || { say "no $b in $FROM"; exit 1; }
done

# A reinstall first removes what the last one put there.
remove_listed
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
"$FROM/scmz" completions bash > "$STAGE/scmz.bash"
"$FROM/scmz" completions zsh > "$STAGE/_scmz"
"$FROM/scmz" completions fish > "$STAGE/scmz.fish"
"$FROM/scmz" man --dir "$STAGE/man1"

installed=()
put() { # put SOURCE DEST MODE
  ensure_dir "$(dirname "$2")"
  install -m "$3" "$1" "$2.scmz-new"
  mv -f "$2.scmz-new" "$2"
  installed+=("$2")
}
put "$FROM/scmz" "$PREFIX/bin/scmz" 755
put "$FROM/scmz-engine" "$PREFIX/bin/scmz-engine" 755
put "$STAGE/scmz.bash" "$PREFIX/share/bash-completion/completions/scmz" 644
put "$STAGE/_scmz" "$PREFIX/share/zsh/site-functions/_scmz" 644
put "$STAGE/scmz.fish" "$PREFIX/share/fish/vendor_completions.d/scmz.fish" 644
for page in "$STAGE"/man1/*.1; do
  put "$page" "$PREFIX/share/man/man1/$(basename "$page")" 644
done
ensure_dir "$(dirname "$LIST")"
printf '%s\n' "${installed[@]}" "${created[@]}" > "$LIST.tmp"
mv -f "$LIST.tmp" "$LIST"

"$PREFIX/bin/scmz" version >/dev/null || { say "the installed scmz does not start"; exit 1; }
say "installed scmz in $PREFIX/bin (${#installed[@]} files; scripts/install.sh --uninstall --prefix $PREFIX removes them)"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) say "$PREFIX/bin is not on your PATH: add  export PATH=\"$PREFIX/bin:\$PATH\"  to your shell's startup file" ;;
esac
