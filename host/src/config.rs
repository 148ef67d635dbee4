//! Configuration: quantization, algorithm choice, watchdog, staging size.
//!
//! Every setting has one spelling, used by [`Quantization::parse`] and
//! [`Quantization::label`], the `FLASHCOMM_*` environment variables, the
//! benchmark and the perplexity tool: `none`, `int8`, `int4-int8` (the
//! reduce-scatter's width first), each optionally followed by `-g<G>` for a
//! group size other than 128 (`label` always prints it: `int8-g128`). A
//! width may carry spike reserving, `k<N>` spikes per group
//! (`codec::spikes`): `int4k4-int8` keeps 4 spikes per group in the
//! reduce-scatter, none in the all-gather; `int8k1` one in both steps.
use crate::error::{Error, Result};
use flashcomm_kernels::abi::Transport;
use flashcomm_kernels::codec::{Bits, GroupSize, Spikes, Wire};
use std::time::Duration;

/// A quantized setting (Flash All-Reduce): the code width of each step and
/// the group size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quantized {
    /// Code width of the reduce-scatter step.
    pub rs_bits: Bits,
    /// Code width of the all-gather step.
    pub ag_bits: Bits,
    /// Elements per quantization group.
    pub group_size: GroupSize,
    /// Spikes per group kept exactly in the reduce-scatter step.
    pub rs_spikes: Spikes,
    /// Spikes per group kept exactly in the all-gather step.
    pub ag_spikes: Spikes,
}

impl Quantized {
    /// A setting without spikes.
    pub const fn new(rs_bits: Bits, ag_bits: Bits, group_size: GroupSize) -> Self {
        Self { rs_bits, ag_bits, group_size, rs_spikes: Spikes::NONE, ag_spikes: Spikes::NONE }
    }

    /// The same setting with these spike counts.
    pub const fn with_spikes(self, rs_spikes: Spikes, ag_spikes: Spikes) -> Self {
        Self { rs_spikes, ag_spikes, ..self }
    }

    /// Whether either step keeps spikes.
    pub const fn has_spikes(&self) -> bool {
        self.rs_spikes.get() + self.ag_spikes.get() > 0
    }

    /// The wire formats of the two steps.
    pub fn wires(&self) -> (Wire, Wire) {
        (Wire::Quantized(self.rs_bits), Wire::Quantized(self.ag_bits))
    }

    /// Bits per element that cross the link in each step, for full groups:
    /// codes, parameters (64 bits per group) and spikes (24 bits each).
    pub fn bits_per_element(&self) -> (f64, f64) {
        let g = self.group_size.get();
        let per = |bits: Bits, spikes: Spikes| 8.0 * flashcomm_kernels::codec::ShardLayout::bytes_per_element(Wire::Quantized(bits), g, spikes.get());
        (per(self.rs_bits, self.rs_spikes), per(self.ag_bits, self.ag_spikes))
    }

    /// `int8-g128`, `int4k4-int8-g64`, ... (see the [module docs](self)).
    pub fn label(&self) -> String {
        let step = |bits: Bits, spikes: Spikes| match spikes.get() {
            0 => bits.name().to_string(),
            k => format!("{}k{k}", bits.name()),
        };
        let (rs, ag) = (step(self.rs_bits, self.rs_spikes), step(self.ag_bits, self.ag_spikes));
        let widths = if rs == ag { rs } else { format!("{rs}-{ag}") };
        format!("{widths}-g{}", self.group_size.get())
    }
}

/// How the message is encoded for transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// No quantization: f32 sums in rank order, rounded once to the element type.
    None,
    /// Flash All-Reduce with these code widths and group size.
    Int(Quantized),
}

impl Quantization {
    /// INT8 in both steps, groups of 128.
    pub const INT8: Self = Self::Int(Quantized::new(Bits::B8, Bits::B8, GroupSize::G128));
    /// The paper's "INT6": INT4 in the reduce-scatter, INT8 in the all-gather, groups of 128.
    pub const INT4_INT8: Self = Self::Int(Quantized::new(Bits::B4, Bits::B8, GroupSize::G128));
    /// INT4 in both steps, groups of 128.
    pub const INT4: Self = Self::Int(Quantized::new(Bits::B4, Bits::B4, GroupSize::G128));

    /// A quantized setting from its parts; a bad group size is a typed error.
    pub fn int(rs_bits: Bits, ag_bits: Bits, group_size: usize) -> Result<Self> {
        let group_size = GroupSize::new(group_size).ok_or_else(|| bad_group(group_size))?;
        Ok(Self::Int(Quantized::new(rs_bits, ag_bits, group_size)))
    }

    /// The quantized setting, if any.
    pub fn quantized(&self) -> Option<Quantized> {
        match *self {
            Self::None => None,
            Self::Int(q) => Some(q),
        }
    }

    /// `none`, or [`Quantized::label`].
    pub fn label(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Int(q) => q.label(),
        }
    }

    /// Parses the spelling of the [module docs](self) (ASCII case ignored).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim().to_ascii_lowercase();
        if text == "none" {
            return Ok(Self::None);
        }
        let (widths, group) = match text.rsplit_once("-g") {
            Some((w, g)) => (w, g.parse::<usize>().map_err(|_| bad_setting(&text))?),
            None => (text.as_str(), 128),
        };
        // A width, optionally with `k<N>` spikes.
        let step = |token: &str| -> Result<(Bits, Spikes)> {
            let (name, spikes) = match token.split_once('k') {
                Some((name, k)) => {
                    let k = k.parse::<usize>().map_err(|_| bad_setting(&text))?;
                    (name, Spikes::new(k).ok_or_else(|| bad_spikes(k))?)
                }
                None => (token, Spikes::NONE),
            };
            let bits = Bits::ALL.iter().copied().find(|b| b.name() == name).ok_or_else(|| bad_setting(&text))?;
            Ok((bits, spikes))
        };
        let (rs, ag) = match widths.split_once('-') {
            Some((rs, ag)) => (step(rs)?, step(ag)?),
            None => (step(widths)?, step(widths)?),
        };
        let group_size = GroupSize::new(group).ok_or_else(|| bad_group(group))?;
        Ok(Self::Int(Quantized::new(rs.0, ag.0, group_size).with_spikes(rs.1, ag.1)))
    }
}

fn bad_setting(text: &str) -> Error {
    let widths: Vec<&str> = Bits::ALL.iter().map(|b| b.name()).collect();
    Error::InvalidConfig(format!(
        "cannot parse quantization {text:?}: use none, one width for both steps ({}), or two joined by '-' \
         (reduce-scatter first, e.g. int4-int8), each optionally with k1, k2, k4 or k8 spikes per group \
         (int4k4-int8), then optionally -g32, -g64, -g128 or -g256",
        widths.join(", ")
    ))
}

fn bad_spikes(k: usize) -> Error {
    let counts: Vec<usize> = Spikes::ALL.iter().map(|s| s.get()).collect();
    Error::InvalidConfig(format!("{k} spikes per group is not supported (use one of {counts:?})"))
}

fn bad_group(group_size: usize) -> Error {
    let sizes: Vec<usize> = GroupSize::ALL.iter().map(|g| g.get()).collect();
    Error::InvalidConfig(format!("group size {group_size} is not supported (use one of {sizes:?})"))
}

/// Which all-reduce algorithm runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Pick by size and world size from measured thresholds; quantized only
    /// when [`Config::quantization`] allows it.
    Auto,
    /// Unquantized one-shot: every rank pushes its whole message to every rank.
    OneShot,
    /// The one-shot with its data in LL lines (flag words beside the data,
    /// no fence before the flag): small messages, up to the grid's capacity
    /// (`Communicator::ll_max_elems`); the one-shot beyond it.
    OneShotLl,
    /// Unquantized two-shot: reduce-scatter then all-gather, plain elements.
    TwoShot,
    /// Quantized two-shot (Flash All-Reduce) with [`Config::quantization`].
    Flash,
    /// NCCL's all-reduce (feature `nccl`, when libnccl loads). Not
    /// bit-identical to the CPU reference (NCCL's own summation order), but
    /// identical on all ranks; no watchdog (NCCL's own semantics).
    Nccl,
}

impl Algorithm {
    /// Every algorithm, in the order of [`Self::name`]'s list.
    pub const ALL: [Self; 6] = [Self::Auto, Self::OneShot, Self::OneShotLl, Self::TwoShot, Self::Flash, Self::Nccl];

    /// The setting's name: `auto`, `oneshot`, `oneshot-ll`, `twoshot`, `flash`, `nccl`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::OneShot => "oneshot",
            Self::OneShotLl => "oneshot-ll",
            Self::TwoShot => "twoshot",
            Self::Flash => "flash",
            Self::Nccl => "nccl",
        }
    }

    /// Parses [`Self::name`] (ASCII case ignored).
    pub fn parse(text: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(text.trim())).ok_or_else(|| {
            Error::InvalidConfig(format!("unknown algorithm {text:?} (auto, oneshot, oneshot-ll, twoshot, flash, nccl)"))
        })
    }
}

/// Parses a [`Transport`] name (`push`, `pull`, `push-pull`, `pull-push`).
pub fn parse_transport(text: &str) -> Result<Transport> {
    Transport::parse(text)
        .ok_or_else(|| Error::InvalidConfig(format!("unknown transport {text:?} (push, pull, push-pull, pull-push)")))
}

/// Size thresholds for [`Algorithm::Auto`], in bytes of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Messages up to this size use the LL one-shot (within its capacity;
    /// 0: never).
    pub ll_max_bytes: usize,
    /// Messages up to this size use the one-shot.
    pub oneshot_max_bytes: usize,
    /// Messages from this size use Flash (if quantization is allowed).
    pub flash_min_bytes: usize,
    /// Unquantized messages from this size use NCCL (if it is loaded and
    /// [`Config::nccl_fallback`] is set); `usize::MAX`: never.
    pub nccl_min_bytes: usize,
}

/// Smallest staging piece: a smaller one gains nothing and costs barriers.
pub const MIN_PIECE_ELEMS: usize = 1 << 16;
/// Largest staging piece: `2 * max_piece_elems` bytes per staging buffer,
/// two buffers per GPU (1 GiB at this bound).
pub const MAX_PIECE_ELEMS: usize = 1 << 28;
/// Longest watchdog timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Communicator configuration. Every field has a default; the environment
/// can override some (`Config::with_env_overrides`).
///
/// ```
/// use flashcomm::{Algorithm, Config, Quantization};
/// use std::time::Duration;
///
/// // Allow INT8 (Auto then picks Flash from its size threshold up), a
/// // tighter watchdog, and INT4-then-INT8 with groups of 64 spelled out.
/// let config = Config { quantization: Quantization::INT8, timeout: Some(Duration::from_millis(50)), ..Config::default() };
/// config.validate().unwrap();
/// assert_eq!(config.algorithm, Algorithm::Auto);
/// let q = Quantization::parse("int4-int8-g64").unwrap();
/// assert_eq!(q.label(), "int4-int8-g64");
/// // Out-of-range settings are typed errors before any GPU is touched.
/// assert!(Config { timeout: Some(Duration::ZERO), ..Config::default() }.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Quantization Flash uses; `None` also keeps `Auto` unquantized.
    pub quantization: Quantization,
    /// Algorithm for every call (per-call overrides exist).
    pub algorithm: Algorithm,
    /// Watchdog: a rank gives up waiting for a peer after this long and the
    /// host gets [`Error::PeerTimeout`]. `None` waits forever; `Some` must be
    /// between 1 ns and [`MAX_TIMEOUT`]. The clock runs from when a rank's
    /// kernel reaches a barrier, so ranks whose streams reach the collective
    /// further apart than this (one rank still busy with a long kernel,
    /// first-call warm-up) also time out: raise it for such workloads.
    /// Default 200 ms.
    pub timeout: Option<Duration>,
    /// Largest piece (elements) the staging buffers hold, between
    /// [`MIN_PIECE_ELEMS`] and [`MAX_PIECE_ELEMS`]: two buffers of about
    /// `2 * max_piece_elems` bytes per GPU. Larger messages run in pieces
    /// inside one kernel launch, one piece's all-gather overlapped with the
    /// next piece's reduce-scatter stage.
    pub max_piece_elems: usize,
    /// Overrides the measured `Auto` thresholds.
    pub thresholds: Option<Thresholds>,
    /// Link direction of the two-shot phases.
    pub transport: Transport,
    /// Let `Auto` fall back to NCCL where the thresholds say NCCL is faster
    /// (creates NCCL communicators at construction when libnccl loads).
    /// Default off: NCCL calls have no watchdog, so a missing rank would
    /// hang them, and their sums do not follow the CPU reference.
    pub nccl_fallback: bool,
    /// Let several ranks share one GPU (a device may repeat in the list
    /// given to `Communicator::new`): for testing multi-rank code and the
    /// collective protocol on fewer GPUs than ranks. The ranks of one GPU
    /// split its SMs and run their kernels side by side through its own
    /// memory, so results are exact but no speed figure carries over; NCCL
    /// (which refuses a repeated GPU) is not used. Default off: a repeated
    /// device is then `Error::DuplicateDevice`, as it is usually a mistake.
    pub shared_devices: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            quantization: Quantization::None,
            algorithm: Algorithm::Auto,
            timeout: Some(Duration::from_millis(200)),
            max_piece_elems: 32 << 20,
            thresholds: None,
            transport: Transport::PUSH,
            nccl_fallback: false,
            shared_devices: false,
        }
    }
}

impl Config {
    /// Applies environment overrides: `FLASHCOMM_ALGO`, `FLASHCOMM_QUANT`,
    /// `FLASHCOMM_TIMEOUT_MS` (0 = no watchdog), `FLASHCOMM_ONESHOT_MAX_BYTES`,
    /// `FLASHCOMM_FLASH_MIN_BYTES`, `FLASHCOMM_TRANSPORT`,
    /// `FLASHCOMM_MAX_PIECE_ELEMS`, each spelled as in the [module docs](self);
    /// then [`Self::validate`]s the result.
    pub fn with_env_overrides(mut self) -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, v: String| {
            v.trim().parse::<usize>().map_err(|_| Error::InvalidConfig(format!("{k}={v:?} is not a number")))
        };
        if let Some(v) = var("FLASHCOMM_ALGO") {
            self.algorithm = Algorithm::parse(&v)?;
        }
        if let Some(v) = var("FLASHCOMM_QUANT") {
            self.quantization = Quantization::parse(&v)?;
        }
        if let Some(v) = var("FLASHCOMM_TRANSPORT") {
            self.transport = parse_transport(&v)?;
        }
        if let Some(v) = var("FLASHCOMM_TIMEOUT_MS") {
            let ms = num("FLASHCOMM_TIMEOUT_MS", v)?;
            self.timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
        }
        if let Some(v) = var("FLASHCOMM_MAX_PIECE_ELEMS") {
            self.max_piece_elems = num("FLASHCOMM_MAX_PIECE_ELEMS", v)?;
        }
        let ll = var("FLASHCOMM_LL_MAX_BYTES").map(|v| num("FLASHCOMM_LL_MAX_BYTES", v)).transpose()?;
        let one = var("FLASHCOMM_ONESHOT_MAX_BYTES").map(|v| num("FLASHCOMM_ONESHOT_MAX_BYTES", v)).transpose()?;
        let flash = var("FLASHCOMM_FLASH_MIN_BYTES").map(|v| num("FLASHCOMM_FLASH_MIN_BYTES", v)).transpose()?;
        if ll.is_some() || one.is_some() || flash.is_some() {
            let base = self.thresholds.unwrap_or(Thresholds { ll_max_bytes: 0, oneshot_max_bytes: 0, flash_min_bytes: usize::MAX, nccl_min_bytes: usize::MAX });
            self.thresholds = Some(Thresholds {
                ll_max_bytes: ll.unwrap_or(base.ll_max_bytes),
                oneshot_max_bytes: one.unwrap_or(base.oneshot_max_bytes),
                flash_min_bytes: flash.unwrap_or(base.flash_min_bytes),
                nccl_min_bytes: base.nccl_min_bytes,
            });
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every value against its documented bounds.
    pub fn validate(&self) -> Result<()> {
        flash_setting(self.algorithm, self.quantization)?;
        if !(MIN_PIECE_ELEMS..=MAX_PIECE_ELEMS).contains(&self.max_piece_elems) {
            return Err(Error::InvalidConfig(format!(
                "max_piece_elems {} is outside {MIN_PIECE_ELEMS}..={MAX_PIECE_ELEMS}",
                self.max_piece_elems
            )));
        }
        if let Some(t) = self.timeout {
            if t.is_zero() || t > MAX_TIMEOUT {
                return Err(Error::InvalidConfig(format!(
                    "timeout {t:?} is outside 1 ns..={MAX_TIMEOUT:?} (None waits forever)"
                )));
            }
        }
        Ok(())
    }
}

/// The quantized setting `Algorithm::Flash` runs with `quantization`; an
/// error when there is none. Other algorithms need nothing.
pub(crate) fn flash_setting(algorithm: Algorithm, quantization: Quantization) -> Result<Option<Quantized>> {
    match (algorithm, quantization) {
        (Algorithm::Flash, Quantization::None) => {
            Err(Error::InvalidConfig("Algorithm::Flash needs a quantized setting (Quantization::Int)".into()))
        }
        (Algorithm::Flash, Quantization::Int(q)) => Ok(Some(q)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses_back_from_its_label() {
        for &rs in Bits::ALL {
            for &ag in Bits::ALL {
                for g in GroupSize::ALL {
                    for rs_k in Spikes::ALL {
                        for ag_k in Spikes::ALL {
                            let q = Quantization::Int(Quantized::new(rs, ag, g).with_spikes(rs_k, ag_k));
                            assert_eq!(Quantization::parse(&q.label()).unwrap(), q, "{}", q.label());
                        }
                    }
                }
            }
        }
        assert_eq!(Quantization::parse(&Quantization::None.label()).unwrap(), Quantization::None);
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()).unwrap(), a);
        }
        for t in Transport::ALL {
            assert_eq!(parse_transport(t.name()).unwrap(), t);
        }
    }
}
