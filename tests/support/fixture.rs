//! Loader of `tests/fixtures/smollm2_w4_partials.bin` (format in
//! `tests/fixtures/README.md`): real row-parallel partial sums of SmolLM2-135M.
use half::bf16;

/// One tensor of the fixture: `world` per-rank partial sums.
pub struct Partials {
    /// Where it came from (layer and projection).
    pub name: String,
    /// Number of ranks the projection was split over.
    pub world: usize,
    /// Elements per token row (the CPU test checks batch invariance per row).
    #[allow(dead_code)]
    pub hidden: usize,
    /// Per-rank partial sums (bf16), each `tokens * hidden` long.
    pub partials: Vec<Vec<bf16>>,
}

/// The fixture file: `$FLASHCOMM_FIXTURES/…`, else `tests/fixtures/…` under
/// the working directory (the GPU host runs from the repo root), else under
/// the crate's source directory.
pub fn path() -> std::path::PathBuf {
    let name = "smollm2_w4_partials.bin";
    if let Ok(dir) = std::env::var("FLASHCOMM_FIXTURES") {
        return std::path::Path::new(&dir).join(name);
    }
    let local = std::path::Path::new("tests/fixtures").join(name);
    if local.exists() {
        return local;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Parses the fixture; `Err` says what is wrong.
pub fn load() -> Result<Vec<Partials>, String> {
    let bytes = std::fs::read(path()).map_err(|e| format!("{}: {e}", path().display()))?;
    parse(&bytes)
}

fn parse(b: &[u8]) -> Result<Vec<Partials>, String> {
    let u32_at = |off: usize| -> Result<usize, String> {
        b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap()) as usize).ok_or("truncated header".to_string())
    };
    if b.get(..8) != Some(b"FCACTS01".as_slice()) {
        return Err("bad magic (expected FCACTS01)".into());
    }
    let count = u32_at(8)?;
    let mut off = 12;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (layer, kind, world, tokens, hidden) = (u32_at(off)?, u32_at(off + 4)?, u32_at(off + 8)?, u32_at(off + 12)?, u32_at(off + 16)?);
        off += 20;
        let n = tokens * hidden;
        let payload = b.get(off..off + 2 * world * n).ok_or("truncated payload")?;
        off += 2 * world * n;
        let partials = (0..world)
            .map(|r| (0..n).map(|i| bf16::from_bits(u16::from_le_bytes([payload[2 * (r * n + i)], payload[2 * (r * n + i) + 1]]))).collect())
            .collect();
        let kind = match kind {
            0 => "attn_output",
            1 => "ffn_down",
            _ => return Err(format!("unknown kind {kind}")),
        };
        out.push(Partials { name: format!("layer {layer} {kind}"), world, hidden, partials });
    }
    if off != b.len() {
        return Err(format!("{} trailing bytes", b.len() - off));
    }
    Ok(out)
}
