//! Configuration: quantization, algorithm choice, watchdog, staging size.
use crate::error::{Error, Result};
use flashcomm_kernels::codec::GROUP_SIZES;
use std::time::Duration;

/// Code width of one quantization step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 4 bits: two codes per byte.
    B4,
    /// 6 bits, stored bit-split as a 4-bit and a 2-bit plane.
    B6,
    /// 8 bits.
    B8,
}

impl Bits {
    /// Every width, widest first.
    pub const ALL: [Bits; 3] = [Bits::B8, Bits::B6, Bits::B4];

    /// The number of bits.
    pub const fn bits(self) -> u32 {
        match self {
            Bits::B4 => 4,
            Bits::B6 => 6,
            Bits::B8 => 8,
        }
    }

    /// Parses 4, 6 or 8.
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            4 => Ok(Bits::B4),
            6 => Ok(Bits::B6),
            8 => Ok(Bits::B8),
            _ => Err(Error::InvalidConfig(format!("{bits}-bit codes are not supported (use 4, 6 or 8)"))),
        }
    }
}

/// How the message is encoded for transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// No quantization: f32 sums in rank order, rounded once to the element type.
    None,
    /// Flash All-Reduce: per-group asymmetric quantization with `rs_bits` in
    /// the reduce-scatter step and `ag_bits` in the all-gather step.
    Int {
        /// Code width of the reduce-scatter step.
        rs_bits: Bits,
        /// Code width of the all-gather step.
        ag_bits: Bits,
        /// Elements per group: 32, 64, 128 or 256.
        group_size: usize,
    },
}

impl Quantization {
    /// INT8 in both steps, groups of 128.
    pub const INT8: Self = Self::Int { rs_bits: Bits::B8, ag_bits: Bits::B8, group_size: 128 };
    /// The paper's "INT6": INT4 in the reduce-scatter, INT8 in the all-gather, groups of 128.
    pub const INT6: Self = Self::Int { rs_bits: Bits::B4, ag_bits: Bits::B8, group_size: 128 };
    /// INT4 in both steps, groups of 128.
    pub const INT4: Self = Self::Int { rs_bits: Bits::B4, ag_bits: Bits::B4, group_size: 128 };

    /// Checks the group size.
    pub fn validate(&self) -> Result<()> {
        if let Self::Int { group_size, .. } = *self {
            if !GROUP_SIZES.contains(&(group_size as u32)) {
                return Err(Error::InvalidConfig(format!(
                    "group size {group_size} is not supported (use one of {GROUP_SIZES:?})"
                )));
            }
        }
        Ok(())
    }

    /// `(rs, ag)` code widths for the kernels: 16 means raw elements.
    pub fn kernel_bits(&self) -> (u32, u32) {
        match *self {
            Self::None => (16, 16),
            Self::Int { rs_bits, ag_bits, .. } => (rs_bits.bits(), ag_bits.bits()),
        }
    }

    /// A short label: `none`, `int8`, `int4/8-g128`, ...
    pub fn label(&self) -> String {
        match *self {
            Self::None => "none".into(),
            Self::Int { rs_bits, ag_bits, group_size } if rs_bits == ag_bits => {
                format!("int{}-g{group_size}", rs_bits.bits())
            }
            Self::Int { rs_bits, ag_bits, group_size } => {
                format!("int{}/{}-g{group_size}", rs_bits.bits(), ag_bits.bits())
            }
        }
    }

    /// Parses `none`, `int8`, `int6` (= 4 then 8), `int4`, or `q<rs>q<ag>`,
    /// each optionally followed by `-g<group>` (default 128).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim().to_ascii_lowercase();
        if text == "none" || text == "off" {
            return Ok(Self::None);
        }
        let (head, group) = match text.split_once("-g") {
            Some((h, g)) => (h.to_string(), g.parse::<usize>().map_err(|_| bad(&text))?),
            None => (text.clone(), 128),
        };
        let (rs, ag) = match head.as_str() {
            "int8" => (8, 8),
            "int6" => (4, 8),
            "int4" => (4, 4),
            q => {
                let rest = q.strip_prefix('q').ok_or_else(|| bad(&text))?;
                let (a, b) = rest.split_once('q').ok_or_else(|| bad(&text))?;
                (a.parse().map_err(|_| bad(&text))?, b.parse().map_err(|_| bad(&text))?)
            }
        };
        let q = Self::Int { rs_bits: Bits::from_bits(rs)?, ag_bits: Bits::from_bits(ag)?, group_size: group };
        q.validate()?;
        Ok(q)
    }
}

fn bad(text: &str) -> Error {
    Error::InvalidConfig(format!(
        "cannot parse quantization {text:?} (use none, int8, int6, int4 or q<rs>q<ag>, with optional -g32/-g64/-g128/-g256)"
    ))
}

/// Which all-reduce algorithm runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Pick by size and world size from measured thresholds; quantized only
    /// when [`Config::quantization`] allows it.
    Auto,
    /// Unquantized one-shot: every rank reads every peer's whole message.
    OneShot,
    /// Unquantized two-shot: reduce-scatter then all-gather, raw elements.
    TwoShot,
    /// Quantized two-shot (Flash All-Reduce) with [`Config::quantization`].
    Flash,
    /// NCCL's all-reduce (feature `nccl`, when libnccl loads): the fallback
    /// `Auto` uses where NCCL measured faster. Not bit-identical to the CPU
    /// reference (NCCL's own summation order), but identical on all ranks.
    Nccl,
}

impl Algorithm {
    /// Parses `auto`, `oneshot`, `twoshot`, `flash`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "oneshot" | "one-shot" | "1shot" => Ok(Self::OneShot),
            "twoshot" | "two-shot" | "2shot" => Ok(Self::TwoShot),
            "flash" | "quantized" => Ok(Self::Flash),
            "nccl" => Ok(Self::Nccl),
            other => Err(Error::InvalidConfig(format!("unknown algorithm {other:?} (auto, oneshot, twoshot, flash, nccl)"))),
        }
    }
}

/// How one phase of the two-shot crosses the links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// Peer loads: the reader fetches from the writer's staging after the barrier.
    Pull,
    /// Peer stores: the writer stores into the reader's staging; loads are local.
    Push,
}

/// Link direction of each two-shot phase (measured: see docs/benchmarks.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transport {
    /// The reduce-scatter step.
    pub reduce_scatter: Link,
    /// The all-gather step.
    pub all_gather: Link,
}

impl Transport {
    /// Both phases push (peer stores).
    pub const PUSH: Self = Self { reduce_scatter: Link::Push, all_gather: Link::Push };
    /// Both phases pull (peer loads).
    pub const PULL: Self = Self { reduce_scatter: Link::Pull, all_gather: Link::Pull };

    /// Kernel argument bits (`flashcomm_kernels::abi::Transport`).
    pub fn bits(&self) -> u32 {
        use flashcomm_kernels::abi::Transport as T;
        (if self.reduce_scatter == Link::Push { T::PUSH_REDUCE_SCATTER } else { 0 })
            | (if self.all_gather == Link::Push { T::PUSH_ALL_GATHER } else { 0 })
    }

    /// `push`, `pull`, `push-pull` (reduce-scatter first), ...
    pub fn label(&self) -> String {
        let l = |k: Link| if k == Link::Push { "push" } else { "pull" };
        if self.reduce_scatter == self.all_gather {
            l(self.reduce_scatter).into()
        } else {
            format!("{}-{}", l(self.reduce_scatter), l(self.all_gather))
        }
    }

    /// Parses `push`, `pull`, `push-pull`, `pull-push`.
    pub fn parse(text: &str) -> Result<Self> {
        let one = |t: &str| match t {
            "push" => Ok(Link::Push),
            "pull" => Ok(Link::Pull),
            _ => Err(Error::InvalidConfig(format!("unknown transport {text:?} (push, pull, push-pull, pull-push)"))),
        };
        let t = text.trim().to_ascii_lowercase();
        match t.split_once('-') {
            Some((a, b)) => Ok(Self { reduce_scatter: one(a)?, all_gather: one(b)? }),
            None => {
                let k = one(&t)?;
                Ok(Self { reduce_scatter: k, all_gather: k })
            }
        }
    }
}

/// Size thresholds for [`Algorithm::Auto`], in bytes of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Messages up to this size use the one-shot.
    pub oneshot_max_bytes: usize,
    /// Messages from this size use Flash (if quantization is allowed).
    pub flash_min_bytes: usize,
    /// Unquantized messages from this size use NCCL (if it is loaded and
    /// [`Config::nccl_fallback`] is set); `usize::MAX`: never.
    pub nccl_min_bytes: usize,
}

/// Communicator configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Quantization Flash uses; `None` also keeps `Auto` unquantized.
    pub quantization: Quantization,
    /// Algorithm for every call (per-call overrides exist).
    pub algorithm: Algorithm,
    /// Watchdog: a rank gives up waiting for a peer after this long and the
    /// host gets [`Error::PeerTimeout`]. `None` waits forever. The clock runs
    /// from when a rank's kernel reaches a barrier, so ranks whose streams
    /// reach the collective further apart than this (one rank still busy with
    /// a long kernel, first-call warm-up) also time out: raise it for such
    /// workloads. Default 200 ms.
    pub timeout: Option<Duration>,
    /// Largest piece (elements) the staging buffers hold: two buffers of
    /// about `2 * max_piece_elems` bytes per GPU. Larger messages run in
    /// pieces inside one kernel launch, one piece's all-gather overlapped
    /// with the next piece's reduce-scatter stage.
    pub max_piece_elems: usize,
    /// Overrides the measured `Auto` thresholds.
    pub thresholds: Option<Thresholds>,
    /// Link direction of the two-shot phases.
    pub transport: Transport,
    /// Let `Auto` fall back to NCCL where it measured faster (creates NCCL
    /// communicators at construction when libnccl loads). Turn off for
    /// results that are bit-identical to the CPU reference at every size.
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
            nccl_fallback: true,
            shared_devices: false,
        }
    }
}

impl Config {
    /// Applies environment overrides: `FLASHCOMM_ALGO`, `FLASHCOMM_QUANT`,
    /// `FLASHCOMM_TIMEOUT_MS` (0 = no watchdog), `FLASHCOMM_ONESHOT_MAX_BYTES`,
    /// `FLASHCOMM_FLASH_MIN_BYTES`, `FLASHCOMM_TRANSPORT` (push, pull, push-pull, pull-push),
    /// `FLASHCOMM_MAX_PIECE_ELEMS`.
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
            self.transport = Transport::parse(&v)?;
        }
        if let Some(v) = var("FLASHCOMM_TIMEOUT_MS") {
            let ms = num("FLASHCOMM_TIMEOUT_MS", v)?;
            self.timeout = (ms > 0).then(|| Duration::from_millis(ms as u64));
        }
        if let Some(v) = var("FLASHCOMM_MAX_PIECE_ELEMS") {
            self.max_piece_elems = num("FLASHCOMM_MAX_PIECE_ELEMS", v)?;
        }
        let one = var("FLASHCOMM_ONESHOT_MAX_BYTES").map(|v| num("FLASHCOMM_ONESHOT_MAX_BYTES", v)).transpose()?;
        let flash = var("FLASHCOMM_FLASH_MIN_BYTES").map(|v| num("FLASHCOMM_FLASH_MIN_BYTES", v)).transpose()?;
        if one.is_some() || flash.is_some() {
            let base = self.thresholds.unwrap_or(Thresholds { oneshot_max_bytes: 0, flash_min_bytes: usize::MAX, nccl_min_bytes: usize::MAX });
            self.thresholds = Some(Thresholds {
                oneshot_max_bytes: one.unwrap_or(base.oneshot_max_bytes),
                flash_min_bytes: flash.unwrap_or(base.flash_min_bytes),
                nccl_min_bytes: base.nccl_min_bytes,
            });
        }
        Ok(self)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        self.quantization.validate()?;
        if self.algorithm == Algorithm::Flash && self.quantization == Quantization::None {
            return Err(Error::InvalidConfig("Algorithm::Flash needs a Quantization::Int setting".into()));
        }
        if self.max_piece_elems < 1 << 16 {
            return Err(Error::InvalidConfig(format!("max_piece_elems {} is below the minimum 65536", self.max_piece_elems)));
        }
        Ok(())
    }
}
