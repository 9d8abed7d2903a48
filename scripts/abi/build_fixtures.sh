#!/usr/bin/env bash
# Builds the ABI-matrix fixture plugin (tests/abi-fixture) against plugin-api as it was
# at each release, strips it, and copies it to
# tests/fixtures/abi/plugin-api-<variant>/lib<name>.so, where tests/tests/abi_matrix.rs
# loads it into today's host. For each released variant it also renders the layout
# fingerprint (plugin-api/abi/<variant>.layout) with the current tree's renderer.
#
#   scripts/abi/build_fixtures.sh                 # every variant below (current: see there)
#   scripts/abi/build_fixtures.sh 0.2.1 current   # only those
#   scripts/abi/build_fixtures.sh --list          # the variants and their commits
#
# Variants:
#   <version>           the release commit of that version (tag plugin-api-v<version>)
#   <version>+<commit>  a later layout that went out under the same version number
#   current             the working tree's plugin-api (its version from plugin-api/Cargo.toml);
#                       skipped while that version is an existing release (tag
#                       plugin-api-v<version>) unless --force: rerun it after a release
#   0.3.0               the committed sources (HEAD) with plugin-api's version set to the next 0.y
#                       and a method appended to the Source vtable (the semver-first refusal)
#
# Each variant is built in a temporary git worktree of its commit; the fixture crate is
# copied next to it with the plugin-api path dependency pointing into that worktree. All
# variants share one cargo target directory (ABI_TARGET_DIR, default
# $CARGO_TARGET_DIR/abi-fixtures or target/abi-fixtures), so tch and torch-sys compile once.
# LIBTORCH must name libtorch 2.13.0 (default: .venv/libtorch of the repository).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# name|commit|what: the released variants, oldest first.
RELEASES=(
  "0.2.0|a367e822def8ea3a9771e5b07b0066cf4e181d8e|plugin-api 0.2.0 as released: EntryInfo has 5 fields"
  "0.2.0+cc63041|cc630418ad42927ce4ff6e12a67fa5aff0a3ea36|the last 0.2.0 (db7cf7e added EntryInfo::includes_head without a bump)"
  "0.2.1|20f5b01e454cce78e78d4c9d54bb1a48486fbf76|plugin-api 0.2.1 as released: Module::forward_named appended to the vtable"
  "0.2.1+d0a0b5d|d0a0b5dbdd1be8c7b8393dfa23ec3e14ae952239|the last 0.2.1 (8267e0a took forward_named out of the vtable again)"
  "0.2.2|54533c363f4c7e04ac1378b5111547870dd8c08a|plugin-api 0.2.2: Source::refusals appended to the vtable"
  "0.2.3|564d946c285cb5f67fe59f273010ee4480265fed|plugin-api 0.2.3: Source::refusals out of the vtable again"
)

FORCE=0
WANT=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --list)
      for r in "${RELEASES[@]}"; do IFS='|' read -r v c w <<<"$r"; echo "$v  ${c:0:7}  $w"; done
      echo "current  (working tree)  plugin-api $(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/plugin-api/Cargo.toml" | head -1)"
      echo "0.3.0  (working tree)  the current sources bumped to the next 0.y, one method appended to Source"
      exit 0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) WANT+=("$a") ;;
  esac
done
if [ ${#WANT[@]} -eq 0 ]; then
  for r in "${RELEASES[@]}"; do WANT+=("${r%%|*}"); done
  WANT+=(current 0.3.0)
fi

: "${LIBTORCH:=$REPO/.venv/libtorch}"
LIBTORCH=$(cd "$LIBTORCH" && pwd -P)
export LIBTORCH
TARGET_DIR=${ABI_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/abi-fixtures}
mkdir -p "$TARGET_DIR"
# A fixed place (not mktemp): the sources' paths end up in the binaries (panic
# locations), so the same commit builds the same bytes on every run.
WORK=${ABI_WORK_DIR:-${TMPDIR:-/tmp}/terrahost-abi-build}
if [ -e "$WORK" ]; then
  echo "$WORK exists (another run, or a stale one): remove it first (git worktree prune afterwards)" >&2
  exit 1
fi
mkdir -p "$WORK"
WORKTREES=()
SRC=
cleanup() {
  for w in "${WORKTREES[@]}"; do git -C "$REPO" worktree remove --force "$w" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
  git -C "$REPO" worktree prune
}
trap cleanup EXIT

CURRENT_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/plugin-api/Cargo.toml" | head -1)
[ -n "$CURRENT_VERSION" ] || { echo "cannot read plugin-api's version from plugin-api/Cargo.toml" >&2; exit 1; }

commit_of() {
  for r in "${RELEASES[@]}"; do
    IFS='|' read -r v c _ <<<"$r"
    [ "$v" = "$1" ] && { echo "$c"; return 0; }
  done
  return 1
}

# worktree <name> <commit>: a detached worktree of <commit> in $SRC, removed on exit.
# (Not called in a $(...) subshell, so that the cleanup sees WORKTREES.)
worktree() {
  SRC="$WORK/src-$1"
  git -C "$REPO" worktree add --detach --quiet "$SRC" "$2"
  WORKTREES+=("$SRC")
}

# build <variant> <plugin-api source tree> <layout file or ""> : builds, strips, copies.
build() {
  local variant=$1 src=$2 layout_out=$3
  local name="abi_$(echo "$variant" | tr '.+' '__')"
  local prefix="abi$(echo "$variant" | tr -cd '[:alnum:]')"
  local b="$WORK/build-$variant"
  mkdir -p "$b/tests/abi-fixture" "$b/plugin-api/abi"
  cp -r "$REPO/tests/abi-fixture/src" "$REPO/tests/abi-fixture/examples" "$REPO/tests/abi-fixture/build.rs" "$b/tests/abi-fixture/"
  sed "s#path = \"../../plugin-api\"#path = \"$src/plugin-api\"#" "$REPO/tests/abi-fixture/Cargo.toml" >"$b/tests/abi-fixture/Cargo.toml"
  grep -q "path = \"$src/plugin-api\"" "$b/tests/abi-fixture/Cargo.toml" || { echo "could not point the fixture at $src/plugin-api" >&2; exit 1; }
  cp "$REPO/plugin-api/abi/render.rs" "$b/plugin-api/abi/render.rs"
  # The repository's lock pins the same dependency versions for every variant, so the
  # shared target directory holds one tch/torch-sys build.
  cp "$REPO/Cargo.lock" "$b/tests/abi-fixture/Cargo.lock"
  echo "== $variant: building $name (prefix $prefix) against $src/plugin-api" >&2
  (cd "$b/tests/abi-fixture" &&
    TERRAHOST_ABI_FIXTURE_NAME=$name TERRAHOST_ABI_FIXTURE_PREFIX=$prefix \
      CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --lib --example layout)
  local so="$TARGET_DIR/release/libterrahost_abi_fixture.so"
  local dest="$REPO/tests/fixtures/abi/plugin-api-$variant"
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$so" "$dest/lib$name.so"
  strip --strip-unneeded "$dest/lib$name.so"
  chmod 0644 "$dest/lib$name.so"
  echo "   $(stat -c %s "$dest/lib$name.so") bytes: ${dest#$REPO/}/lib$name.so" >&2
  if [ -n "$layout_out" ]; then
    LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      "$TARGET_DIR/release/examples/layout" >"$WORK/layout"
    if [ -f "$layout_out" ] && ! cmp -s "$WORK/layout" "$layout_out"; then
      echo "   WARNING: ${layout_out#$REPO/} differs from this build's layout; rewritten (review the diff)" >&2
    fi
    cp "$WORK/layout" "$layout_out"
    echo "   layout: ${layout_out#$REPO/}" >&2
  fi
}

for v in "${WANT[@]}"; do
  case "$v" in
    current)
      if git -C "$REPO" rev-parse -q --verify "refs/tags/plugin-api-v$CURRENT_VERSION" >/dev/null && [ $FORCE = 0 ]; then
        echo "== current: plugin-api $CURRENT_VERSION is a release (tag plugin-api-v$CURRENT_VERSION); its fixture is built from the tag (--force to build the working tree)" >&2
        continue
      fi
      layout="$REPO/plugin-api/abi/$CURRENT_VERSION.layout"
      build "$CURRENT_VERSION" "$REPO" "$layout"
      ;;
    0.3.0 | next)
      # The next 0.y: a copy of the committed sources (HEAD) with the version bumped and a
      # method appended to the Source vtable. Its layout is not a release: none is written.
      worktree next HEAD
      src=$SRC
      next=$(echo "$CURRENT_VERSION" | awk -F. '$1 == 0 { print "0." $2 + 1 ".0"; next } { print $1 + 1 ".0.0" }')
      sed -i "s/^version = \"$CURRENT_VERSION\"/version = \"$next\"/" "$src/plugin-api/Cargo.toml"
      grep -q "^version = \"$next\"" "$src/plugin-api/Cargo.toml" || { echo "could not bump $src/plugin-api/Cargo.toml" >&2; exit 1; }
      python3 - "$src/plugin-api/src/source.rs" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
m = re.search(r"pub trait Source\b[^{]*\{", s)
if not m:
    sys.exit("no `pub trait Source` in " + p)
depth, i = 1, m.end()
while depth:
    depth += {"{": 1, "}": -1}.get(s[i], 0)
    i += 1
extra = ("\n    /// Appended for the ABI matrix's next-0.y fixture (a layout change).\n"
         "    fn abi_fixture_appended(&self) -> u32 {\n        0\n    }\n")
open(p, "w").write(s[: i - 1] + extra + s[i - 1 :])
EOF
      build "$next" "$src" ""
      ;;
    *)
      c=$(commit_of "$v") || { echo "unknown variant $v (see --list)" >&2; exit 1; }
      worktree "$v" "$c"
      src=$SRC
      build "$v" "$src" "$REPO/plugin-api/abi/$v.layout"
      ;;
  esac
done
