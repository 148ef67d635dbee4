#!/usr/bin/env python3
"""Independent checks of the Gemma-3-270M path of `perplexity` (docs/accuracy.md).

1. Dequantization: gguf-py's numpy dequantizer (ggml's own Python package)
   on one tensor of each type; prints the f64 sum, sum of squares and a few
   elements, the constants of gguf.rs's test `gemma3_tensors_match_gguf_py`.
2. Tokenizer: rebuilds a SentencePiece BPE model from the GGUF's tokens,
   scores and token types (identity normalizer, no dummy prefix, byte
   fallback, split digits), cuts the user-defined tokens out of the text
   first as llama.cpp does (longest first), encodes the rest with the
   `sentencepiece` library and compares the ids with `perplexity --tokenize`.
   (Plain SentencePiece would escape spaces before matching the user-defined
   runs of literal spaces; llama.cpp, which this tool follows, matches them
   first.)

Needs: pip install gguf numpy sentencepiece protobuf; a release build of
perplexity. Usage:
  check/gemma3_reference.py MODELS_DIR PERPLEXITY_BIN TEXT_FILE...
"""
import subprocess
import sys

import gguf
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

models, binary, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
path = f"{models}/gemma3/gemma-3-270m-q4_k_m.gguf"
r = gguf.GGUFReader(path)

# ---- 1. dequantization ----
want = ["token_embd.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
        "blk.0.ffn_down.weight", "blk.5.attn_v.weight", "blk.5.ffn_down.weight"]
for t in r.tensors:
    if t.name in want:
        x = gguf.quants.dequantize(t.data, t.tensor_type).ravel().astype(np.float32)
        d = x.astype(np.float64)
        idx = [0, 1, 2, 3, d.size // 2 + 7, d.size - 1]
        print(f"{t.name} {t.tensor_type.name} sum {float(d.sum())!r} sumsq {float((d * d).sum())!r}",
              [(i, float(x[i])) for i in idx])

# ---- 2. tokenizer ----
f = r.fields
def arr(name):
    fl = f[name]
    return [fl.parts[i] for i in fl.data]
toks = [bytes(x).decode("utf8") for x in arr("tokenizer.ggml.tokens")]
scores = [float(x[0]) for x in arr("tokenizer.ggml.scores")]
types = [int(x[0]) for x in arr("tokenizer.ggml.token_type")]
unk = int(f["tokenizer.ggml.unknown_token_id"].parts[-1][0])
m = pb.ModelProto()
for i, (t, s, ty) in enumerate(zip(toks, scores, types)):
    p = m.pieces.add()
    p.piece, p.score, p.type = t, s, (2 if i == unk else ty)
m.trainer_spec.model_type = pb.TrainerSpec.BPE
m.trainer_spec.byte_fallback = True
m.trainer_spec.split_digits = True
m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = unk, 2, 1, 0
m.trainer_spec.allow_whitespace_only_pieces = True
m.normalizer_spec.name = "identity"
m.normalizer_spec.add_dummy_prefix = False
m.normalizer_spec.remove_extra_whitespaces = False
m.normalizer_spec.escape_whitespaces = True
sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
user = sorted([(p.piece, i) for i, p in enumerate(m.pieces) if p.type == 4], key=lambda t: (-len(t[0].encode()), t[1]))

def partition(text):
    frags = [text]
    for u, i in user:
        out = []
        for fr in frags:
            if isinstance(fr, str) and u in fr:
                parts = fr.split(u)
                for k, part in enumerate(parts):
                    if part:
                        out.append(part)
                    if k < len(parts) - 1:
                        out.append(i)
            else:
                out.append(fr)
        frags = out
    return frags

bad = 0
for tf in texts:
    text = open(tf, encoding="utf8").read()
    ref = []
    for fr in partition(text):
        ref.extend([fr] if isinstance(fr, int) else sp.encode(fr))
    ours = subprocess.run([binary, "--model", "gemma3", "--models", models, "--tokenize", tf],
                          capture_output=True, text=True, check=True).stdout.split()
    ours = [int(x) for x in ours]
    if ours == ref:
        print(f"{tf}: identical, {len(ref)} tokens")
    else:
        bad += 1
        i = next((i for i in range(min(len(ours), len(ref))) if ours[i] != ref[i]), min(len(ours), len(ref)))
        print(f"{tf}: DIFFER at token {i}: ours {ours[i:i + 5]} sentencepiece {ref[i:i + 5]}")
sys.exit(1 if bad else 0)
