//! Queuing one rank's part of a collective: the plan (which algorithm, from
//! config, options and size), the kernel and its arguments (the call's tag,
//! the one-shot's buffers), the pieces of a long message, and the grid.
use super::{CallOptions, Communicator};
use crate::config::{flash_setting, Algorithm, Config, Quantization, Quantized};
use crate::driver;
use crate::error::{Error, Result};
use flashcomm_kernels::abi::{BarrierArgs, OneShotArgs, PhaseSkip, ShardGeometry, TwoStepArgs, LL_LINE_ELEMS, THREADS};
use flashcomm_kernels::codec::layout::PLAIN_SHARD_UNIT;
use flashcomm_kernels::codec::{Dtype, Wire, CHUNK};
use flashcomm_kernels::entry::KernelId;

/// What one call runs, resolved from config, options and size: the
/// [`Algorithm`] with everything it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Unquantized one-shot.
    OneShot,
    /// Unquantized one-shot with LL lines (one launch, within the capacity).
    OneShotLl,
    /// Unquantized two-shot (the two-step kernel with plain wires).
    TwoShot,
    /// Flash All-Reduce (the two-step kernel with quantized wires).
    Flash(Quantized),
    /// NCCL's all-reduce.
    Nccl,
}

impl Plan {
    /// The algorithm this plan runs.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Plan::OneShot => Algorithm::OneShot,
            Plan::OneShotLl => Algorithm::OneShotLl,
            Plan::TwoShot => Algorithm::TwoShot,
            Plan::Flash(_) => Algorithm::Flash,
            Plan::Nccl => Algorithm::Nccl,
        }
    }

    /// The quantization whose result this plan computes (the CPU
    /// reference's argument; NCCL's sum is unquantized).
    pub fn quantization(&self) -> Quantization {
        match *self {
            Plan::Flash(q) => Quantization::Int(q),
            _ => Quantization::None,
        }
    }

    /// `oneshot`, `twoshot`, `flash-int8-g128`, `nccl`.
    pub fn label(&self) -> String {
        match self {
            Plan::Flash(q) => format!("flash-{}", q.label()),
            other => other.algorithm().name().into(),
        }
    }

    /// The two-step kernel's wires and shard unit (None: not a two-step plan).
    fn twostep(&self) -> Option<(Wire, Wire, usize)> {
        match *self {
            Plan::TwoShot => Some((Wire::Plain, Wire::Plain, PLAIN_SHARD_UNIT)),
            Plan::Flash(q) => {
                let (rs, ag) = q.wires();
                Some((rs, ag, q.group_size.get()))
            }
            _ => None,
        }
    }
}

/// Largest one-shot launch (elements; a multiple of 512): its buffer holds
/// two slots of `world` plain copies of this many elements (16 MiB per GPU
/// at W = 2, 64 MiB at W = 8). Longer one-shot calls run in several
/// launches; `Auto` picks the one-shot only far below this.
pub(super) const ONESHOT_MAX_ELEMS: usize = 2 << 20;
/// Blocks of every one-shot launch, whatever its size and element type: the
/// kernel's slot reuse without an exit barrier needs block `b` to cover the
/// same tiles in every call (kernel docs); capped by the residency of both
/// one-shot kernels (`Communicator::oneshot_grid`).
pub(super) const ONESHOT_GRID: u32 = 128;

/// Elements of one one-shot launch; a multiple of 512, as plain blobs are
/// padded to that (layout docs).
pub(super) fn oneshot_elems(config: &Config) -> usize {
    ONESHOT_MAX_ELEMS.min(config.max_piece_elems) / 512 * 512
}

/// One rank's part of one call, as the launches see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call {
    /// The rank's place among this process's ranks (`Communicator::ranks`).
    pub local: usize,
    /// Its input's device address.
    pub input: u64,
    /// Its output's device address (may equal the input).
    pub output: u64,
    /// Elements.
    pub len: usize,
    /// Element type.
    pub dtype: Dtype,
    /// What runs.
    pub plan: Plan,
}

impl Call {
    /// The tag of launch `launch` of this call (FNV-1a over the call's
    /// whole shape and the launch's place in it): ranks compare tags at the
    /// entry barrier, so calls that disagree fail as `CollectiveMismatch`,
    /// also when they split into launches differently.
    fn tag(&self, launch: usize, launch_len: usize, kernel: KernelId, unit: usize, transport: u32) -> u32 {
        fnv1a(&[
            self.len as u64,
            launch as u64,
            launch_len as u64,
            self.dtype as u64,
            self.plan.algorithm() as u64,
            kernel_words(kernel),
            unit as u64,
            transport as u64,
            // The spike counts (one spiky kernel serves every count) and,
            // for safety, the widths.
            match self.plan {
                Plan::Flash(q) => (q.rs_spikes.get() | q.ag_spikes.get() << 8) as u64 | (q.rs_bits.bits() as u64) << 16 | (q.ag_bits.bits() as u64) << 24,
                _ => 0,
            },
        ])
    }
}

/// FNV-1a over the words' little-endian bytes.
fn fnv1a(words: &[u64]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

impl Communicator {
    /// The plan a call with `len` elements of `dtype` would run.
    pub fn plan(&self, len: usize, dtype: Dtype, opts: &CallOptions) -> Result<Plan> {
        let quant = opts.quantization.unwrap_or(self.config.quantization);
        let algorithm = opts.algorithm.unwrap_or(self.config.algorithm);
        let bytes = len.checked_mul(dtype.size()).ok_or(Error::Overflow { what: "the message size in bytes" })?;
        Ok(match algorithm {
            // An empty call still crosses one barrier (`launch_oneshot`).
            _ if len == 0 && algorithm != Algorithm::Nccl => {
                flash_setting(algorithm, quant)?;
                Plan::OneShot
            }
            Algorithm::OneShot => Plan::OneShot,
            Algorithm::OneShotLl if len <= self.ll_max_elems() => Plan::OneShotLl,
            Algorithm::OneShotLl => Plan::OneShot,
            Algorithm::TwoShot => Plan::TwoShot,
            Algorithm::Flash => Plan::Flash(flash_setting(algorithm, quant)?.expect("Flash yields a setting or an error")),
            Algorithm::Nccl if self.has_nccl() => Plan::Nccl,
            Algorithm::Nccl => {
                return Err(Error::Nccl("NCCL is not available to this communicator (feature `nccl`, libnccl.so, Config::nccl_fallback)".into()))
            }
            Algorithm::Auto => {
                let t = &self.thresholds;
                match quant {
                    _ if bytes <= t.ll_max_bytes && len <= self.ll_max_elems() => Plan::OneShotLl,
                    _ if bytes <= t.oneshot_max_bytes => Plan::OneShot,
                    // Spike settings only run when asked for (Algorithm::Flash):
                    // slower than the unquantized two-shot at W = 2 from
                    // 16 MiB for k >= 4 (docs/benchmarks.md, spike reserving),
                    // so `Auto` keeps its no-slower-than-NCCL promise without them.
                    Quantization::Int(q) if bytes >= t.flash_min_bytes && !q.has_spikes() => Plan::Flash(q),
                    _ if bytes >= t.nccl_min_bytes && self.has_nccl() => Plan::Nccl,
                    _ => Plan::TwoShot,
                }
            }
        })
    }

    /// Elements one launch of `plan` may cover (staging capacity).
    fn piece_elems(&self, plan: Plan) -> usize {
        match plan {
            Plan::OneShot => oneshot_elems(&self.config),
            Plan::OneShotLl => self.ll_max_elems(),
            Plan::TwoShot | Plan::Flash(_) => self.config.max_piece_elems / 512 * 512,
            Plan::Nccl => usize::MAX,
        }
    }

    /// Queues the kernels of one rank's part of a collective; on the
    /// diagnostic kernel skipping `skip`'s phases when `skip` is given. The
    /// caller holds the rank's launch lock (`launch_lock`).
    pub(super) fn launch(&self, call: Call, opts: &CallOptions, skip: Option<PhaseSkip>) -> Result<()> {
        let r = &self.ranks[call.local];
        r.ctx.bind_to_thread()?;
        // A captured kernel refers to this memory (and NCCL communicator) on
        // every replay: the graph keeps it alive (module docs).
        // SAFETY: the rank's own stream, its context bound.
        if let Some(graph) = unsafe { driver::graph::capturing_graph(r.stream.cu_stream())? } {
            // SAFETY: `graph` is being captured on this context's stream.
            unsafe { driver::graph::retain_in_graph(graph, self.memory.clone())? };
        }
        let launched = match (call.plan, call.plan.twostep()) {
            (Plan::Nccl, _) => self.launch_nccl(&call),
            (Plan::OneShotLl, _) => self.launch_oneshot_ll(&call),
            (_, Some((rs, ag, unit))) if call.len > 0 => {
                let transport = opts.transport.unwrap_or(self.config.transport).word();
                self.launch_twostep(&call, (rs, ag, unit), transport, skip)
            }
            _ => self.launch_oneshot(&call),
        };
        // A launch that failed may leave part of the call queued (the
        // one-shot's later launches): the ranks no longer agree on the
        // calls made, so every rank's collectives stop.
        if let Err(e) = &launched {
            self.abort_kernels()?;
            super::lock(&self.poisoned).get_or_insert_with(|| format!("rank {}: a launch failed: {e}", self.ranks[call.local].index));
        }
        launched
    }

    /// The two-step kernel runs all pieces of the message in one launch
    /// (pipelined, see the kernel docs); pieces are balanced so the last one
    /// is not much shorter (every piece uses a full piece's geometry).
    fn launch_twostep(&self, call: &Call, (rs, ag, unit): (Wire, Wire, usize), transport: u32, skip: Option<PhaseSkip>) -> Result<()> {
        let r = &self.ranks[call.local];
        let kernel = match skip {
            Some(_) => KernelId::TwoStepDiagnostic { dtype: call.dtype, rs, ag },
            None => KernelId::TwoStep { dtype: call.dtype, rs, ag, spiky: matches!(call.plan, Plan::Flash(q) if q.has_spikes()) },
        };
        let piece_len = balanced_piece(call.len, self.piece_elems(call.plan));
        let mut args = TwoStepArgs {
            input: call.input,
            output: call.output,
            len: call.len as u64,
            piece_len: piece_len as u64,
            staging_in: self.peers.staging_in,
            staging_out: self.peers.staging_out,
            shard_stride: self.peers.shard_stride as u64,
            shard_unit: unit as u32,
            transport,
            rs_spikes: if let Plan::Flash(q) = call.plan { q.rs_spikes.get() as u32 } else { 0 },
            ag_spikes: if let Plan::Flash(q) = call.plan { q.ag_spikes.get() as u32 } else { 0 },
            barrier: BarrierArgs { tag: call.tag(0, piece_len, kernel, unit, transport), ..r.barrier },
        };
        let tiles = ShardGeometry::new(piece_len.min(call.len), self.world_size(), unit).tiles.max(1) as u32;
        let blocks = tiles.min(self.resident(kernel)?);
        let func = self.memory.ranks[call.local].kernels.get(kernel)?.handle();
        // SAFETY: the context is bound; the kernel takes one TwoStepArgs
        // (plus the phases to skip, for a diagnostic kernel); staging and
        // sync buffers are owned by `self.memory` (kept alive by graphs that
        // capture this) and peer-mapped; input/output hold `len` elements
        // (checked by the callers) and are ordered on this stream by the
        // callers; `piece_len` is a multiple of 512 within the staging capacity.
        unsafe {
            match skip {
                Some(mut skip) => driver::launch::launch_with_args_and(func, blocks, THREADS, r.stream.cu_stream(), &mut args, &mut skip)?,
                None => driver::launch::launch_with_args(func, blocks, THREADS, r.stream.cu_stream(), &mut args)?,
            }
        };
        Ok(())
    }

    /// The one-shot runs one launch per piece of its buffer's capacity, and
    /// one launch (a barrier only) for an empty call, so that an empty call
    /// on one rank against a non-empty one on another is a mismatch, not a
    /// silent timeout.
    fn launch_oneshot(&self, call: &Call) -> Result<()> {
        let r = &self.ranks[call.local];
        let kernel = KernelId::OneShot(call.dtype);
        let func = self.memory.ranks[call.local].kernels.get(kernel)?.handle();
        let piece = self.piece_elems(Plan::OneShot);
        let mut start = 0;
        for launch in 0.. {
            let n = piece.min(call.len - start);
            let mut args = OneShotArgs {
                input: call.input + (start * call.dtype.size()) as u64,
                output: call.output + (start * call.dtype.size()) as u64,
                len: n as u64,
                buffers: self.peers.oneshot,
                region_stride: self.peers.oneshot_stride as u64,
                barrier: BarrierArgs { tag: call.tag(launch, n, kernel, CHUNK, 0), ..r.barrier },
            };
            // SAFETY: the context is bound; the kernel takes one
            // OneShotArgs; the one-shot and sync buffers are owned by
            // `self.memory` and peer-mapped; this launch's `n` elements of
            // input and output are in bounds (checked by the callers) and
            // ordered on this stream; `n` fits the one-shot buffer's regions.
            unsafe { driver::launch::launch_with_args(func, self.oneshot_grid, THREADS, r.stream.cu_stream(), &mut args)? };
            start += n;
            if start >= call.len {
                break;
            }
        }
        Ok(())
    }

    /// Elements the LL one-shot covers in one launch: four per thread of
    /// the one-shot grid.
    pub fn ll_max_elems(&self) -> usize {
        self.oneshot_grid as usize * THREADS as usize * LL_LINE_ELEMS
    }

    /// The LL one-shot: one launch (the plan keeps `len` within
    /// [`Communicator::ll_max_elems`]), on the one-shot's grid.
    fn launch_oneshot_ll(&self, call: &Call) -> Result<()> {
        let r = &self.ranks[call.local];
        let kernel = KernelId::OneShotLl(call.dtype);
        let func = self.memory.ranks[call.local].kernels.get(kernel)?.handle();
        if call.len > self.ll_max_elems() {
            return Err(Error::InvalidConfig(format!("an LL one-shot of {} elements (capacity {})", call.len, self.ll_max_elems())));
        }
        let mut args = OneShotArgs {
            input: call.input,
            output: call.output,
            len: call.len as u64,
            buffers: self.peers.ll,
            region_stride: self.peers.ll_stride as u64,
            barrier: BarrierArgs { tag: call.tag(0, call.len, kernel, LL_LINE_ELEMS, 0), ..r.barrier },
        };
        // SAFETY: the context is bound; the kernel takes one OneShotArgs;
        // the LL and sync buffers are owned by `self.memory` and
        // peer-mapped, each region holding a line per thread of the grid;
        // `len` elements of input and output are in bounds (checked by the
        // callers), at most four per thread (checked above), and ordered on
        // this stream.
        unsafe { driver::launch::launch_with_args(func, self.oneshot_grid, THREADS, r.stream.cu_stream(), &mut args)? };
        Ok(())
    }

    fn resident(&self, kernel: KernelId) -> Result<u32> {
        self.resident_blocks.get(&kernel).copied().ok_or_else(|| Error::MissingKernel { name: format!("{kernel:?}") })
    }

    fn launch_nccl(&self, call: &Call) -> Result<()> {
        #[cfg(feature = "nccl")]
        if let Some(nccl) = &self.memory.nccl {
            // SAFETY: callers checked that input/output hold `len` elements
            // on this rank's GPU and ordered them on its stream.
            return unsafe { nccl.all_reduce_raw(call.local, call.input, call.output, call.len, call.dtype) };
        }
        let _ = call;
        Err(Error::Nccl("NCCL is not available to this communicator".into()))
    }

    /// Benchmark diagnostics: an all-rank call on the diagnostic two-step
    /// kernel that skips `skip`'s phases' data work (the result is wrong;
    /// timing it shows where a call's time goes). Two-step plans only.
    #[cfg(feature = "diagnostics")]
    pub fn all_reduce_skipping_phases<T: crate::HostElement>(
        &self,
        inputs: &[impl cudarc::driver::DevicePtr<T>],
        outputs: &mut [impl cudarc::driver::DevicePtrMut<T>],
        opts: &CallOptions,
        skip: PhaseSkip,
    ) -> Result<()> {
        self.check_usable()?;
        let locals = self.ranks.len();
        if inputs.len() != locals || outputs.len() != locals {
            return Err(Error::BufferCount { world: locals, got: inputs.len().min(outputs.len()) });
        }
        let len = inputs[0].len();
        if let Some(r) = (0..locals).find(|&r| inputs[r].len() != len || outputs[r].len() != len) {
            return Err(Error::LengthMismatch { rank: self.ranks[r].index, len: inputs[r].len(), expected: len });
        }
        let plan = self.plan(len, T::DTYPE, opts)?;
        if plan.twostep().is_none() {
            return Err(Error::InvalidConfig(format!("phase diagnostics need a two-step plan, not {}", plan.label())));
        }
        if matches!(plan, Plan::Flash(q) if q.has_spikes()) {
            return Err(Error::InvalidConfig("the diagnostic kernels have no spike reserving".into()));
        }
        self.issue_every_rank(plan, |r| {
            let stream = &self.ranks[r].stream;
            let (src, _read) = inputs[r].device_ptr(stream);
            let (dst, _write) = outputs[r].device_ptr_mut(stream);
            self.launch(Call { local: r, input: src, output: dst, len, dtype: T::DTYPE, plan }, opts, Some(skip))
        })
    }
}

/// The kernel key as one number for the tag.
fn kernel_words(kernel: KernelId) -> u64 {
    let wire = |w: Wire| w.bits() as u64;
    match kernel {
        KernelId::TwoStep { dtype, rs, ag, spiky } => (spiky as u64) << 24 | (dtype as u64) << 16 | wire(rs) << 8 | wire(ag),
        KernelId::TwoStepDiagnostic { dtype, rs, ag } => 1 << 33 | (dtype as u64) << 16 | wire(rs) << 8 | wire(ag),
        KernelId::OneShot(dtype) => 1 << 32 | dtype as u64,
        KernelId::OneShotLl(dtype) => 1 << 34 | dtype as u64,
        _ => 0,
    }
}

/// Messages of at least this many elements run in two pieces or more even
/// when one would fit: the kernel overlaps one piece's gather with the next
/// piece's stage (two pieces measured faster than one at 64 MiB; pieces
/// below ~16M elements lose more to per-piece barriers than they gain;
/// docs/benchmarks.md).
const PIPELINE_MIN_ELEMS: usize = 32 << 20;

/// The piece length for a two-step call of `len` elements when at most
/// `max_piece` (a multiple of 512) fit the staging buffers: as few pieces as
/// possible (but two from [`PIPELINE_MIN_ELEMS`]), of equal length rounded up
/// to a multiple of 512.
fn balanced_piece(len: usize, max_piece: usize) -> usize {
    let pieces = len.div_ceil(max_piece).max(if len >= PIPELINE_MIN_ELEMS { 2 } else { 1 });
    len.div_ceil(pieces).next_multiple_of(512).min(max_piece)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(len: usize, plan: Plan) -> Call {
        Call { local: 0, input: 0, output: 0, len, dtype: Dtype::Bf16, plan }
    }

    /// A call's launches carry its whole shape: the one-shot's launches of
    /// a 3M-element call (2M then 1M) do not pass for calls of 2M and 1M,
    /// an empty call not for a non-empty one, and equal calls agree.
    #[test]
    fn tags_cover_the_whole_call() {
        let one = KernelId::OneShot(Dtype::Bf16);
        let (m2, m1) = (2 << 20, 1 << 20);
        let split = [call(3 << 20, Plan::OneShot).tag(0, m2, one, CHUNK, 0), call(3 << 20, Plan::OneShot).tag(1, m1, one, CHUNK, 0)];
        let separate = [call(m2, Plan::OneShot).tag(0, m2, one, CHUNK, 0), call(m1, Plan::OneShot).tag(0, m1, one, CHUNK, 0)];
        assert_ne!(split[0], separate[0]);
        assert_ne!(split[1], separate[1]);
        assert_ne!(call(0, Plan::OneShot).tag(0, 0, one, CHUNK, 0), call(4096, Plan::OneShot).tag(0, 4096, one, CHUNK, 0));
        assert_eq!(call(4096, Plan::OneShot).tag(0, 4096, one, CHUNK, 0), call(4096, Plan::OneShot).tag(0, 4096, one, CHUNK, 0));
        // The diagnostic kernel never pairs with the production one.
        let (rs, ag) = (Wire::Plain, Wire::Plain);
        let twostep = call(1 << 20, Plan::TwoShot);
        assert_ne!(
            twostep.tag(0, 1 << 20, KernelId::TwoStep { dtype: Dtype::Bf16, rs, ag, spiky: false }, 256, 3),
            twostep.tag(0, 1 << 20, KernelId::TwoStepDiagnostic { dtype: Dtype::Bf16, rs, ag }, 256, 3)
        );
    }

    #[test]
    fn balanced_pieces_cover_the_message_within_capacity() {
        let max = 32 << 20;
        for len in [1usize, 511, 512, 513, 1 << 20, (32 << 20) - 1, 32 << 20, (32 << 20) + 1, 100_000_007, 128 << 20, (128 << 20) + 3] {
            let piece = balanced_piece(len, max);
            let pieces = len.div_ceil(piece);
            assert!(piece % 512 == 0 && piece <= max, "len {len}: piece {piece}");
            assert!(pieces * piece >= len && (pieces - 1) * piece < len, "len {len}: {pieces} x {piece}");
            let expected = len.div_ceil(max).max(if len >= PIPELINE_MIN_ELEMS { 2 } else { 1 });
            assert_eq!(pieces, expected, "len {len}");
        }
        // A small staging capacity: many pieces, the last barely shorter.
        let piece = balanced_piece(1_000_000, 1 << 16);
        assert_eq!(1_000_000usize.div_ceil(piece), 16);
        assert!(1_000_000 - 15 * piece > piece - 16 * 512);
    }
}
