#!/usr/bin/env python3
"""Gemma-3-270M against llama.cpp (through llama-cpp-python): perplexity of
the `--sanity` windows (BOS + 511 tokens of Moby Dick ch. 1-3, 4 windows,
2,044 predictions; `perplexity --model gemma3 --sanity` prints 60.398),
llama.cpp's own tokenization of the same text, and the top 5 next-token
logits of a prompt (`perplexity --model gemma3 --generate PROMPT`).

Needs llama-cpp-python (pip install llama-cpp-python builds llama.cpp) and
numpy. Usage: check/gemma3_llama_cpp.py MODELS_DIR PERPLEXITY_BIN
"""
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

models, binary = sys.argv[1], sys.argv[2]
text = "\n".join(open(f"{models}/text/moby-dick/chapter_{c}.txt", encoding="utf8").read() for c in (1, 2, 3))
with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf8", delete=False) as f:
    f.write(text)
ours = [int(x) for x in subprocess.run([binary, "--model", "gemma3", "--models", models, "--tokenize", f.name],
                                       capture_output=True, text=True, check=True).stdout.split()]
llm = Llama(model_path=f"{models}/gemma3/gemma-3-270m-q4_k_m.gguf", n_ctx=512, n_batch=512, n_ubatch=512,
            logits_all=True, n_threads=2, verbose=False)
theirs = llm.tokenize(text.encode("utf8"), add_bos=False, special=False)
same = ours == theirs
print(f"tokenizer: {len(ours)} ids, llama.cpp {len(theirs)}: {'identical' if same else 'DIFFERENT'}")
if not same:
    i = next((i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]), None)
    print(f"  first difference at {i}: ours {ours[i:i + 5]} llama.cpp {theirs[i:i + 5]}")

bos = llm.token_bos()
nll, cnt = 0.0, 0
for w in range(4):
    toks = [bos] + ours[w * 511:(w + 1) * 511]
    llm.reset()
    llm.eval(toks)
    z = np.array(llm.scores[:len(toks)], dtype=np.float64)
    lse = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    for t in range(len(toks) - 1):
        nll += lse[t] - z[t, toks[t + 1]]
        cnt += 1
print(f"llama.cpp: 4 windows of 512 positions ({cnt} predictions): PPL {np.exp(nll / cnt):.3f}")

for prompt in ["The capital of France is", "Call me Ishmael. Some years ago"]:
    toks = [bos] + llm.tokenize(prompt.encode("utf8"), add_bos=False, special=False)
    llm.reset()
    llm.eval(toks)
    z = np.array(llm.scores[len(toks) - 1], dtype=np.float64)
    p = np.exp(z - z.max()); p /= p.sum()
    top = np.argsort(-z)[:5]
    print(f"prompt {prompt!r}: ids {toks}")
    for i in top:
        print(f"  top: {i:>6} {llm.detokenize([int(i)]).decode('utf8', 'replace')!r:<16} logit {z[i]:8.4f}  p {p[i]:.4f}")
