//! Tokenizers built from the GGUF's `tokenizer.ggml.*` metadata:
//! GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`, SmolLM2) and
//! SentencePiece-style BPE over scores (`"llama"`, Gemma 3; see [`Spm`]).
//!
//! ## Byte-level BPE (`gpt2`)
//!
//! Pre-tokenization follows `tokenizer.ggml.pre`. For `smollm` (and the other
//! StarCoder-family names) llama.cpp and the Hugging Face tokenizer.json both
//! do two steps: (1) isolate every single `\p{N}` character (HF:
//! `Digits(individual_digits=true)`), then (2) split each remaining piece
//! with the GPT-2 pattern (HF: `ByteLevel(add_prefix_space=false)`).
//! For `gpt2`/`default` only step (2) is applied. Other values are rejected.
//!
//! Special/control tokens written literally in the text (e.g. `<|im_start|>`)
//! are NOT recognised: the evaluation texts contain none.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use crate::gguf::Gguf;

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    /// `Some`: SentencePiece-style model (`tokenizer.ggml.model = "llama"`);
    /// the BPE fields below are then unused.
    spm: Option<Spm>,
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    merges: HashMap<(String, String), u32>,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    split_digits: bool,
    re: Regex,
    pub bos: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the rest to
/// U+0100 upwards, in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

impl Tokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, String> {
        let model = g.get("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model == "llama" {
            return Spm::from_gguf(g);
        }
        if model != "gpt2" {
            return Err(format!("tokenizer.ggml.model = {model:?}: only gpt2 (byte-level BPE) and llama (SentencePiece) are implemented"));
        }
        let pre = g.metadata.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => true,
            "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => false,
            other => return Err(format!("tokenizer.ggml.pre = {other:?} not implemented")),
        };
        let tokens = vocabulary(g)?;
        let vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut merges = HashMap::new();
        for (rank, m) in g
            .get("tokenizer.ggml.merges")?
            .as_array()
            .ok_or("tokenizer.ggml.merges not an array")?
            .iter()
            .enumerate()
        {
            let m = m.as_str().ok_or("merge not a string")?;
            let (a, b) = m.split_once(' ').ok_or_else(|| format!("bad merge {m:?}"))?;
            merges.entry((a.to_owned(), b.to_owned())).or_insert(rank as u32);
        }
        let byte_to_char = bytes_to_unicode();
        let char_to_byte = byte_to_char.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let bos = g.metadata.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
        let add_bos = g.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Tokenizer {
            spm: None,
            vocab,
            tokens,
            merges,
            byte_to_char,
            char_to_byte,
            split_digits,
            re: Regex::new(GPT2_PATTERN).map_err(|e| e.to_string())?,
            bos,
            add_bos,
        })
    }

    /// Pre-tokenize `text` into pieces (byte strings before BPE).
    pub fn pre_tokenize<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut first: Vec<&str> = Vec::new();
        if self.split_digits {
            let mut start = 0;
            for (i, ch) in text.char_indices() {
                if is_number(ch) {
                    if start < i {
                        first.push(&text[start..i]);
                    }
                    first.push(&text[i..i + ch.len_utf8()]);
                    start = i + ch.len_utf8();
                }
            }
            if start < text.len() {
                first.push(&text[start..]);
            }
        } else {
            first.push(text);
        }
        let mut out = Vec::new();
        for piece in first {
            let mut last = 0;
            for m in self.re.find_iter(piece) {
                let m = m.expect("regex backtrack limit");
                if m.start() > last {
                    out.push(&piece[last..m.start()]);
                }
                out.push(m.as_str());
                last = m.end();
            }
            if last < piece.len() {
                out.push(&piece[last..]);
            }
        }
        out
    }

    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<String> = piece.bytes().map(|b| self.byte_to_char[b as usize].to_string()).collect();
        loop {
            let mut best: Option<(u32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&r) = self.merges.get(&(syms[i].clone(), syms[i + 1].clone())) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((rank, _)) = best else { break };
            // merge every occurrence of the best pair, left to right
            let mut merged = Vec::with_capacity(syms.len());
            let mut i = 0;
            while i < syms.len() {
                if i + 1 < syms.len() && self.merges.get(&(syms[i].clone(), syms[i + 1].clone())) == Some(&rank) {
                    merged.push(format!("{}{}", syms[i], syms[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut syms[i]));
                    i += 1;
                }
            }
            syms = merged;
        }
        for s in syms {
            match self.vocab.get(&s) {
                Some(&id) => out.push(id),
                None => {
                    // should not happen for a byte-level vocabulary; fall back to bytes
                    for ch in s.chars() {
                        let b = self.char_to_byte[&ch];
                        out.push(self.vocab[&self.byte_to_char[b as usize].to_string()]);
                    }
                }
            }
        }
    }

    /// Encode text (no BOS; see `add_bos`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if let Some(spm) = &self.spm {
            return spm.encode(&self.vocab, text);
        }
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut out = Vec::new();
        for piece in self.pre_tokenize(text) {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let mut ids = Vec::new();
            self.bpe(piece, &mut ids);
            out.extend_from_slice(&ids);
            cache.insert(piece, ids);
        }
        out
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        if let Some(spm) = &self.spm {
            return spm.decode(&self.tokens, ids);
        }
        let mut bytes = Vec::new();
        for &id in ids {
            for ch in self.tokens[id as usize].chars() {
                match self.char_to_byte.get(&ch) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(ch.to_string().as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `\p{N}`: Unicode general category N (Nd, Nl, No) — what `char::is_numeric` tests.
fn is_number(ch: char) -> bool {
    ch.is_numeric()
}

// ------------------------------------------------------------ SentencePiece --

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_BYTE: i32 = 6;

/// SentencePiece-style tokenizer (`tokenizer.ggml.model = "llama"`), as
/// llama.cpp runs it (`llama-vocab.cpp`: `tokenizer_st_partition`, then
/// `llm_tokenizer_spm_session::tokenize` on each plain-text fragment):
///
/// 1. **User-defined tokens** (type 4; Gemma 3: runs of `\n`, of spaces, of
///    tabs, some HTML tags) are cut out of the text first, longest token first,
///    every occurrence, left to right. Control tokens (`<bos>`,
///    `<start_of_turn>`, ...) written in the text are not recognised (llama.cpp
///    with `parse_special = false`; the evaluation texts contain none).
/// 2. Each remaining fragment: a space prefix only if
///    `tokenizer.ggml.add_space_prefix` (Gemma 3: false), every `' '` replaced
///    by `U+2581` (`▁`), split into UTF-8 characters, then repeatedly merge the
///    adjacent pair whose concatenation is a vocabulary token of the highest
///    score (ties: leftmost), until no pair is in the vocabulary.
/// 3. A final piece that is not a token (a character outside the vocabulary)
///    is emitted as its UTF-8 bytes, `<0xXX>` byte tokens (type 6).
struct Spm {
    scores: Vec<f32>,
    /// user-defined tokens, longest first
    user: Vec<(String, u32)>,
    byte_tok: [Option<u32>; 256],
    add_space_prefix: bool,
    unk: Option<u32>,
}

/// A candidate merge of symbols `left` and `right` (indices into the symbol
/// list); `len` is the byte length of the merged text when it was queued, so
/// stale entries (a side merged since) are recognised and skipped.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair
    /// (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// The GGUF's token strings (`tokenizer.ggml.tokens`), in id order.
fn vocabulary(g: &Gguf) -> Result<Vec<String>, String> {
    Ok(g.get("tokenizer.ggml.tokens")?
        .as_array()
        .ok_or("tokenizer.ggml.tokens not an array")?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or("token not a string"))
        .collect::<Result<_, _>>()?)
}

impl Spm {
    fn from_gguf(g: &Gguf) -> Result<Tokenizer, String> {
        let tokens = vocabulary(g)?;
        let scores: Vec<f32> = g
            .get("tokenizer.ggml.scores")?
            .as_array()
            .ok_or("tokenizer.ggml.scores not an array")?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32).ok_or("score not a number"))
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = g
            .get("tokenizer.ggml.token_type")?
            .as_array()
            .ok_or("tokenizer.ggml.token_type not an array")?
            .iter()
            .map(|v| match v {
                crate::gguf::Value::I32(x) => Ok(*x),
                v => v.as_u64().map(|x| x as i32).ok_or("token type not an integer"),
            })
            .collect::<Result<_, _>>()?;
        if scores.len() != tokens.len() || types.len() != tokens.len() {
            return Err("tokenizer.ggml.tokens/scores/token_type lengths differ".into());
        }
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // last id wins for a duplicate text, as in llama.cpp's token_to_id
            vocab.insert(t.clone(), i as u32);
        }
        let mut user: Vec<(String, u32)> = tokens
            .iter()
            .enumerate()
            .filter(|&(i, t)| types[i] == TOKEN_TYPE_USER_DEFINED && !t.is_empty())
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        user.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut byte_tok = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == TOKEN_TYPE_BYTE {
                let hex = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).ok_or_else(|| format!("byte token {t:?}"))?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| format!("byte token {t:?}"))?;
                byte_tok[b as usize] = Some(i as u32);
            }
        }
        if types.iter().filter(|&&t| t == TOKEN_TYPE_NORMAL).count() == 0 {
            return Err("SentencePiece vocabulary without normal tokens".into());
        }
        let meta_u32 = |k: &str| g.metadata.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let spm = Spm {
            scores,
            user,
            byte_tok,
            add_space_prefix: g.metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true),
            unk: meta_u32("tokenizer.ggml.unknown_token_id"),
        };
        Ok(Tokenizer {
            spm: Some(spm),
            vocab,
            tokens,
            merges: HashMap::new(),
            byte_to_char: ['\0'; 256],
            char_to_byte: HashMap::new(),
            split_digits: false,
            re: Regex::new("$^").map_err(|e| e.to_string())?,
            bos: meta_u32("tokenizer.ggml.bos_token_id"),
            add_bos: g.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(true),
        })
    }

    /// Step 1: split `text` into plain fragments and user-defined tokens.
    fn partition<'a>(&self, text: &'a str) -> Vec<Result<&'a str, u32>> {
        let mut frags: Vec<Result<&'a str, u32>> = vec![Ok(text)];
        for (ut, id) in &self.user {
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Ok(s) if s.contains(ut.as_str()) => {
                        let mut rest = s;
                        while let Some(p) = rest.find(ut.as_str()) {
                            if p > 0 {
                                next.push(Ok(&rest[..p]));
                            }
                            next.push(Err(*id));
                            rest = &rest[p + ut.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Ok(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    /// Step 2 and 3 on one fragment (already escaped: spaces as `▁`).
    fn encode_piece(&self, vocab: &HashMap<String, u32>, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (off, ch)) in text.char_indices().enumerate() {
            syms.push(Sym { start: off, len: ch.len_utf8(), prev: i.checked_sub(1), next: None });
        }
        let n = syms.len();
        for (i, s) in syms.iter_mut().enumerate().take(n.saturating_sub(1)) {
            s.next = Some(i + 1);
        }
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let s = &text[syms[l].start..syms[r].start + syms[r].len];
            if let Some(&id) = vocab.get(s) {
                heap.push(Bigram { score: self.scores[id as usize], left: l, right: r, len: s.len() });
            }
        };
        for i in 1..n {
            try_add(&mut heap, &syms, Some(i - 1), Some(i));
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.len {
                continue; // stale
            }
            // merge r into l
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            try_add(&mut heap, &syms, syms[l].prev, Some(l));
            try_add(&mut heap, &syms, Some(l), syms[l].next);
        }
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(k) = i {
            let s = &text[syms[k].start..syms[k].start + syms[k].len];
            match vocab.get(s) {
                Some(&id) => out.push(id),
                None => {
                    // only single characters can be missing (merges make tokens)
                    for b in s.bytes() {
                        match (self.byte_tok[b as usize], self.unk) {
                            (Some(id), _) | (None, Some(id)) => out.push(id),
                            (None, None) => {}
                        }
                    }
                }
            }
            i = syms[k].next;
        }
    }

    fn encode(&self, vocab: &HashMap<String, u32>, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        for f in self.partition(text) {
            match f {
                Ok(s) => {
                    let mut t = String::with_capacity(s.len() + 3);
                    if self.add_space_prefix && prev_special {
                        t.push('\u{2581}');
                    }
                    t.extend(s.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
                    self.encode_piece(vocab, &t, &mut out);
                    prev_special = false;
                }
                Err(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        out
    }

    fn decode(&self, tokens: &[String], ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let t = &tokens[id as usize];
            match self.byte_tok.iter().position(|&b| b == Some(id)) {
                Some(b) => bytes.push(b as u8),
                None => bytes.extend_from_slice(t.replace('\u{2581}', " ").as_bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy SentencePiece vocabulary: ids are positions in `toks`.
    fn toy() -> (Spm, HashMap<String, u32>, Vec<String>) {
        let toks: Vec<(&str, f32, i32)> = vec![
            ("<unk>", 0.0, 2),
            ("\n", 0.0, TOKEN_TYPE_USER_DEFINED),
            ("\n\n", 0.0, TOKEN_TYPE_USER_DEFINED),
            ("  ", 0.0, TOKEN_TYPE_USER_DEFINED),
            ("\u{2581}", -10.0, 1),
            ("a", -1.0, 1),
            ("b", -1.0, 1),
            ("c", -1.0, 1),
            ("ab", -3.0, 1),
            ("bc", -2.0, 1),
            ("\u{2581}a", -4.0, 1),
            ("\u{2581}ab", -5.0, 1),
            ("abc", -6.0, 1),
            ("<0xC3>", 0.0, TOKEN_TYPE_BYTE),
            ("<0xA9>", 0.0, TOKEN_TYPE_BYTE),
        ];
        let mut byte_tok = [None; 256];
        byte_tok[0xc3] = Some(13);
        byte_tok[0xa9] = Some(14);
        let mut user: Vec<(String, u32)> = toks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.2 == TOKEN_TYPE_USER_DEFINED)
            .map(|(i, t)| (t.0.to_string(), i as u32))
            .collect();
        user.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let spm = Spm { scores: toks.iter().map(|t| t.1).collect(), user, byte_tok, add_space_prefix: false, unk: Some(0) };
        let vocab = toks.iter().enumerate().map(|(i, t)| (t.0.to_string(), i as u32)).collect();
        (spm, vocab, toks.iter().map(|t| t.0.to_string()).collect())
    }

    #[test]
    fn spm_merges_by_score() {
        let (spm, vocab, _) = toy();
        // "abc": pairs ab (-3) and bc (-2): bc first (higher score), then a+bc is
        // not a token ("abc" = a|bc is, as text: "abc" -6) -> merged to abc.
        assert_eq!(spm.encode(&vocab, "abc"), vec![12]);
        // "ab": one merge
        assert_eq!(spm.encode(&vocab, "ab"), vec![8]);
        // " ab": ▁+a (-4) vs a+b (-3): ab first, then ▁+ab (-5) -> ▁ab
        assert_eq!(spm.encode(&vocab, " ab"), vec![11]);
        // "cab": c+a not a token; a+b -> ab; c+ab not a token
        assert_eq!(spm.encode(&vocab, "cab"), vec![7, 8]);
    }

    #[test]
    fn spm_user_defined_and_bytes() {
        let (spm, vocab, toks) = toy();
        // "\n\n" is matched before "\n" (longest first); two spaces are a user token,
        // one space is ▁; é (not in the vocab) falls back to its UTF-8 bytes
        let ids = spm.encode(&vocab, "a\n\n\nb  c é");
        assert_eq!(ids, vec![5, 2, 1, 6, 3, 7, 4, 13, 14]);
        assert_eq!(spm.decode(&toks, &ids), "a\n\n\nb  c é");
    }
}
