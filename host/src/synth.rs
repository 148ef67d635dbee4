//! Deterministic synthetic data for tests, the main job and the benchmarks:
//! a tiny seeded RNG (no dependency) and generators shaped like LLM
//! activations (normal bulk plus a few large outlier channels).
use crate::element::HostElement;

/// SplitMix64: small, fast, seedable, good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in `[lo, hi]`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// LLM-like activations of `rows x hidden` (flattened): N(0, scale) bulk,
/// and `outlier_channels` fixed channels (the same on every rank, as in real
/// models) 20-100x larger.
pub fn activations<T: HostElement>(rng: &mut Rng, len: usize, hidden: usize, scale: f64, outlier_channels: &[usize]) -> Vec<T> {
    (0..len)
        .map(|i| {
            let mut v = rng.normal() * scale;
            if outlier_channels.contains(&(i % hidden.max(1))) {
                v *= 20.0 + 80.0 * rng.uniform();
            }
            T::from_f32(v as f32)
        })
        .collect()
}

/// `world` per-rank activation tensors sharing outlier channels.
pub fn rank_activations<T: HostElement>(seed: u64, world: usize, len: usize, hidden: usize) -> Vec<Vec<T>> {
    let mut rng = Rng::new(seed);
    let outliers: Vec<usize> = (0..4).map(|_| rng.range(0, hidden.max(1) - 1)).collect();
    (0..world).map(|_| activations(&mut rng, len, hidden, 1.0, &outliers)).collect()
}
