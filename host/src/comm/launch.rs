//! Queuing one rank's part of a collective: which kernel, its arguments
//! (the call's tag, the one-shot's buffers), the pieces of a long message,
//! and the grid.
use super::{CallOptions, Communicator, Plan, RAW_SHARD_UNIT};
use crate::config::{Config, Quantization};
use crate::error::{Error, Result};
use crate::kernels::Kernel;
use crate::raw;
use flashcomm_kernels::abi::{CollectiveArgs, ShardGeometry, THREADS};
use flashcomm_kernels::codec::{Dtype, CHUNK};

/// Largest one-shot launch (elements; a multiple of 512): its buffer holds
/// two slots of `world` raw copies of this many elements (16 MiB per GPU at
/// W = 2, 64 MiB at W = 8). Longer one-shot calls run in several launches;
/// `Auto` picks the one-shot only far below this.
pub(super) const ONESHOT_MAX_ELEMS: usize = 2 << 20;
/// Blocks of every one-shot launch, whatever its size and element type: the
/// kernel's slot reuse without an exit barrier needs block `b` to cover the
/// same tiles in every call (kernel docs); capped by the residency of both
/// one-shot kernels (`Communicator::oneshot_grid`).
pub(super) const ONESHOT_GRID: u32 = 128;

/// Elements of one one-shot launch; a multiple of 512, as raw blobs are
/// padded to that (layout docs).
pub(super) fn oneshot_elems(config: &Config) -> usize {
    ONESHOT_MAX_ELEMS.min(config.max_piece_elems) / 512 * 512
}

/// A call's tag (FNV-1a over its shape): ranks compare tags at the entry
/// barrier, so calls that disagree fail as `CollectiveMismatch`.
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
    /// Elements one launch of `plan` may cover (staging capacity).
    fn piece_elems(&self, plan: Plan) -> usize {
        match plan {
            Plan::OneShot => oneshot_elems(&self.config),
            Plan::TwoShot(_) => self.config.max_piece_elems / 512 * 512,
            Plan::Nccl => usize::MAX,
        }
    }

    /// Queues the kernels of one rank's part of a collective, piece by piece.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_rank(&self, rank: usize, input: u64, output: u64, len: usize, dtype: Dtype, plan: Plan, opts: &CallOptions) -> Result<()> {
        let r = &self.ranks[rank];
        let world = self.world_size();
        if plan == Plan::Nccl {
            #[cfg(feature = "nccl")]
            if let Some(nccl) = &self.nccl {
                let _one_at_a_time = r.launch.lock().unwrap();
                // SAFETY: callers checked that input/output hold `len`
                // elements on this rank's GPU and ordered them on its stream.
                return unsafe { nccl.all_reduce_raw(rank, input, output, len, dtype) };
            }
            return Err(Error::Nccl("NCCL is not available to this communicator".into()));
        }
        let (kernel, group_size) = match plan {
            Plan::Nccl => unreachable!("handled above"),
            Plan::OneShot => (Kernel::OneShot(dtype), CHUNK),
            Plan::TwoShot(q @ Quantization::None) => (Kernel::twoshot(dtype, &q), RAW_SHARD_UNIT),
            Plan::TwoShot(q @ Quantization::Int { group_size, .. }) => (Kernel::twoshot(dtype, &q), group_size),
        };
        let func = r.functions.get(&kernel).ok_or_else(|| Error::MissingKernel { name: kernel.name() })?;
        let resident = self.resident_blocks[&kernel];
        let (rs, ag) = match kernel {
            Kernel::TwoShot(_, rs, ag) => (rs, ag),
            _ => (16, 16),
        };
        let transport = opts.transport.unwrap_or(self.config.transport).bits() | opts.diagnostic_skip;
        let mut args = CollectiveArgs { group_size: group_size as u32, transport, ..r.args };
        if plan == Plan::OneShot {
            // The one-shot kernel's buffers travel as its `staging_in`.
            args.staging_in = self.oneshot_buffers;
            args.shard_stride = self.oneshot_stride as u64;
        }
        let piece = self.piece_elems(plan);
        let _one_at_a_time = r.launch.lock().unwrap();
        r.ctx.bind_to_thread()?;
        // The two-shot kernel runs all pieces of the message in one launch
        // (pipelined, see the kernel docs); pieces are balanced so the last
        // one is not much shorter (every piece uses a full piece's geometry).
        // The one-shot runs one launch per piece.
        let (step, twoshot_piece) = match plan {
            Plan::TwoShot(_) => (len, Some(balanced_piece(len, piece))),
            _ => (piece, None),
        };
        let mut start = 0;
        while start < len {
            let n = step.min(len - start);
            let piece_len = twoshot_piece.unwrap_or(n);
            args.input = input + (start * dtype.size()) as u64;
            args.output = output + (start * dtype.size()) as u64;
            args.len = n as u64;
            args.piece_len = piece_len as u64;
            args.tag = fnv1a(&[n as u64, piece_len as u64, dtype as u64, plan.algorithm() as u64, rs as u64, ag as u64, group_size as u64, transport as u64]);
            let tiles = match plan {
                Plan::TwoShot(_) => ShardGeometry::new(piece_len.min(n), world, group_size).tiles,
                _ => n.div_ceil(CHUNK).div_ceil(THREADS as usize),
            };
            let blocks = match plan {
                Plan::OneShot => self.oneshot_grid,
                _ => (tiles.max(1) as u32).min(resident),
            };
            // SAFETY: the context is bound; the kernel takes one CollectiveArgs;
            // staging and sync buffers are owned by `self` and peer-mapped;
            // input/output hold `len` elements (checked by the callers) and
            // are ordered on this stream by the callers; `piece_len` is a
            // multiple of 512 within the staging capacity.
            unsafe { raw::launch::launch_with_args(func.cu_function(), blocks, THREADS, r.stream.cu_stream(), &mut args)? };
            start += n;
        }
        Ok(())
    }
}

/// Messages of at least this many elements run in two pieces or more even
/// when one would fit: the kernel overlaps one piece's gather with the next
/// piece's stage (measured on 4x H200, W = 4, 64 MiB: two pieces 5% faster
/// than one; pieces below ~16M elements lose more to per-piece barriers
/// than they gain).
const PIPELINE_MIN_ELEMS: usize = 32 << 20;

/// The piece length for a two-shot call of `len` elements when at most
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
