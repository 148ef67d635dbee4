//! GPT-2 style byte-level BPE built from the GGUF's `tokenizer.ggml.*` metadata.
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

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::gguf::Gguf;

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
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
        if model != "gpt2" {
            return Err(format!("tokenizer.ggml.model = {model:?}, only gpt2 (byte-level BPE) is implemented"));
        }
        let pre = g.metadata.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => true,
            "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => false,
            other => return Err(format!("tokenizer.ggml.pre = {other:?} not implemented")),
        };
        let tokens: Vec<String> = g
            .get("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or("tokenizer.ggml.tokens not an array")?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or("token not a string"))
            .collect::<Result<_, _>>()?;
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
