//! The one error type of flashcomm.
use cudarc::driver::DriverError;

/// Everything that can go wrong; library code never panics on bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA driver call failed.
    #[error("CUDA driver error: {0:?}")]
    Driver(#[from] DriverError),
    /// An NCCL call failed (baseline/fallback only).
    #[error("NCCL error: {0}")]
    Nccl(String),
    /// No CUDA driver could be loaded, or it reports no device.
    #[error("no CUDA GPU is available: {0}")]
    NoGpu(String),
    /// The configuration is not supported.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// World size outside 2..=8 (or 1..=8 for the CPU reference).
    #[error("world size {world} is not supported (allowed: {min}..={max})")]
    WorldSize {
        /// World size asked for.
        world: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A device ordinal appears twice.
    #[error("device {device} is listed twice; each rank needs its own GPU (Config::shared_devices allows sharing, for tests)")]
    DuplicateDevice {
        /// The device ordinal.
        device: usize,
    },
    /// A device ordinal does not exist.
    #[error("device {device} does not exist ({count} CUDA devices visible)")]
    NoSuchDevice {
        /// The device ordinal.
        device: usize,
        /// Devices visible.
        count: usize,
    },
    /// Peer access between two GPUs is unavailable or failed the probe.
    #[error("peer access from GPU {from} to GPU {to} is unavailable: {why}")]
    PeerAccessUnavailable {
        /// Device that would access its peer.
        from: usize,
        /// Device whose memory it would access.
        to: usize,
        /// What the driver or the probe reported.
        why: String,
    },
    /// Per-rank buffers do not all have the same length.
    #[error("length mismatch: rank {rank} has {len} elements, rank 0 has {expected}")]
    LengthMismatch {
        /// The rank.
        rank: usize,
        /// Elements of this rank.
        len: usize,
        /// Elements of rank 0.
        expected: usize,
    },
    /// Input and output of a rank differ in length.
    #[error("rank {rank}: input has {input} elements but output has {output}")]
    OutputLength {
        /// The rank.
        rank: usize,
        /// Input elements.
        input: usize,
        /// Output elements.
        output: usize,
    },
    /// The number of buffers passed is not the world size.
    #[error("expected one buffer per rank ({world}), got {got}")]
    BufferCount {
        /// World size asked for.
        world: usize,
        /// Buffers given.
        got: usize,
    },
    /// A buffer lives on another GPU than its rank's.
    #[error("rank {rank}'s buffer is on device {found}, expected device {expected}")]
    WrongDevice {
        /// The rank.
        rank: usize,
        /// Device the buffer is on.
        found: usize,
        /// The rank's device.
        expected: usize,
    },
    /// A pointer is not aligned as the kernels require.
    #[error("rank {rank}: {what} pointer {ptr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The rank.
        rank: usize,
        /// What is wrong.
        what: &'static str,
        /// The address.
        ptr: u64,
        /// Required alignment in bytes.
        align: usize,
    },
    /// Input and output of a rank overlap without being the same buffer.
    #[error("rank {rank}: input and output overlap without being identical")]
    Overlap {
        /// The rank.
        rank: usize,
    },
    /// A size or an address range does not fit the machine's arithmetic.
    #[error("{what} overflows")]
    Overflow {
        /// What is wrong.
        what: &'static str,
    },
    /// A buffer is smaller than the call needs.
    #[error("the {what} holds {bytes} bytes, {needed} are needed")]
    BufferTooSmall {
        /// What is wrong.
        what: &'static str,
        /// Bytes it holds.
        bytes: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A rank index outside the communicator.
    #[error("rank {rank} does not exist (world size {world})")]
    NoSuchRank {
        /// The rank.
        rank: usize,
        /// World size asked for.
        world: usize,
    },
    /// A rank that runs in another process: this process's communicator
    /// can issue and wait for its own ranks only.
    #[error("rank {rank} runs in another process; this communicator drives only its own ranks (Communicator::local_ranks)")]
    RemoteRank {
        /// The rank.
        rank: usize,
    },
    /// A rank in another process could not set up its part of the
    /// communicator, disagrees with this one, or ended.
    #[error("rank {rank} (another process): {why}")]
    PeerProcess {
        /// The rank.
        rank: usize,
        /// What happened.
        why: String,
    },
    /// The watchdog fired: a peer never reached a barrier.
    #[error("rank {rank} timed out waiting for rank {peer} at the {phase} barrier (block {block}); the communicator needs recover()")]
    PeerTimeout {
        /// The rank.
        rank: usize,
        /// The other rank involved.
        peer: usize,
        /// Barrier: "entry" or "second".
        phase: &'static str,
        /// Thread block that saw it.
        block: usize,
    },
    /// Ranks entered one collective with different lengths or configurations.
    #[error("rank {rank}: rank {peer} entered the collective with a different length or configuration (block {block}); the communicator needs recover()")]
    CollectiveMismatch {
        /// The rank.
        rank: usize,
        /// The other rank involved.
        peer: usize,
        /// Thread block that saw it.
        block: usize,
    },
    /// Another rank failed (timeout or mismatch) and told this one; this
    /// rank's collectives since then did not run.
    #[error("rank {rank}: rank {peer} failed a collective, so this rank's collectives since then did not run; the communicator needs recover()")]
    PeerFailed {
        /// The rank.
        rank: usize,
        /// The other rank involved.
        peer: usize,
    },
    /// The rank's collectives were stopped by the host: `recover()`, or a
    /// call that could not be queued on every rank.
    #[error("rank {rank}: its collectives were aborted (recover(), or a call that could not be queued on every rank); the communicator needs recover()")]
    Aborted {
        /// The rank.
        rank: usize,
    },
    /// Two threads issued calls for one rank at the same time: each rank's
    /// calls must come in one order (see `Communicator`'s docs).
    #[error("rank {rank}: another thread is issuing a call for this rank; issue each rank's calls from one thread, in one order")]
    ConcurrentCall {
        /// The rank.
        rank: usize,
    },
    /// A previous collective failed; call `recover()` first.
    #[error("the communicator is unusable after an earlier failure ({0}); call recover()")]
    Poisoned(String),
    /// Ranks in separate processes could not meet or talk (`bootstrap`).
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    /// A kernel the host needs is missing from the PTX.
    #[error("kernel {name} is missing from the embedded PTX")]
    MissingKernel {
        /// Kernel name.
        name: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
