//! Creating a [`Communicator`]: devices and contexts, peer access (enabled
//! and probed for real), kernels, the per-rank staging, one-shot and sync
//! buffers, and how many blocks every rank can keep resident.
use super::launch::{oneshot_elems, ONESHOT_GRID};
use super::{tuning, Communicator, Rank, RAW_SHARD_UNIT};
use crate::config::Config;
use crate::device::{gpu_count, PeerBuffer};
use crate::error::{Error, Result};
use crate::kernels::{Kernel, KernelImage};
use crate::raw;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};
use flashcomm_kernels::abi::{sync_area, CollectiveArgs, MAX_BLOCKS, MAX_WORLD, THREADS};
use flashcomm_kernels::codec::{Dtype, ShardLayout, CHUNK};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

impl Communicator {
    /// Creates a communicator over `devices` (one rank per device, rank
    /// order = list order; a device may repeat only with
    /// [`Config::shared_devices`]) with the kernels of `image`.
    ///
    /// Checks the devices, enables and *probes* peer access across every
    /// ordered pair (a real store and load by a kernel), loads the kernels,
    /// and allocates the staging and flag memory once.
    pub fn new(devices: &[usize], config: Config, image: &KernelImage) -> Result<Self> {
        config.validate()?;
        let world = devices.len();
        if !(2..=MAX_WORLD).contains(&world) {
            return Err(Error::WorldSize { world, min: 2, max: MAX_WORLD });
        }
        let repeated = devices.iter().enumerate().find(|&(i, d)| devices[..i].contains(d)).map(|(_, &d)| d);
        if let (Some(device), false) = (repeated, config.shared_devices) {
            return Err(Error::DuplicateDevice { device });
        }
        let shared = repeated.is_some();
        let count = gpu_count();
        if count == 0 {
            return Err(Error::NoGpu("no CUDA driver or no device".into()));
        }
        if let Some(&device) = devices.iter().find(|&&d| d >= count) {
            return Err(Error::NoSuchDevice { device, count });
        }

        // One context per GPU; ranks sharing a GPU (Config::shared_devices)
        // share its context and reach each other's buffers directly.
        let mut ctxs: Vec<Arc<CudaContext>> = Vec::with_capacity(world);
        for (i, &d) in devices.iter().enumerate() {
            let ctx = match devices[..i].iter().position(|&e| e == d) {
                Some(first) => ctxs[first].clone(),
                None => CudaContext::new(d)?,
            };
            ctxs.push(ctx);
        }
        // Peer access for every ordered pair of distinct GPUs (once per
        // pair: enabling twice is an error), before any allocation peers map.
        for (i, a) in ctxs.iter().enumerate() {
            for (j, b) in ctxs.iter().enumerate() {
                let repeat = devices[..i].contains(&devices[i]) || devices[..j].contains(&devices[j]);
                if devices[i] == devices[j] || repeat {
                    continue;
                }
                if !raw::peer::can_access(a.cu_device(), b.cu_device())? {
                    return Err(Error::PeerAccessUnavailable {
                        from: devices[i],
                        to: devices[j],
                        why: "cuDeviceCanAccessPeer reports no access".into(),
                    });
                }
                a.bind_to_thread()?;
                // SAFETY: `a` is bound to this thread; `b` is a live context of another device.
                unsafe { raw::peer::enable(b.cu_ctx())? };
            }
        }

        // Staging: the raw (2 bytes/element) shard blob of the largest piece
        // bounds every quantized blob (at most 1.25 bytes/element).
        let max_groups = config.max_piece_elems.div_ceil(RAW_SHARD_UNIT).div_ceil(world);
        let shard_stride = ShardLayout::new(max_groups, RAW_SHARD_UNIT, 16).total_bytes().next_multiple_of(256);
        let oneshot_stride = ShardLayout::new(oneshot_elems(&config) / CHUNK, CHUNK, 16).total_bytes().next_multiple_of(256);

        // Load the module on every GPU in parallel (the driver JIT-compiles the PTX).
        let all_kernels = Kernel::all();
        let loaded: Vec<Result<(Arc<CudaModule>, HashMap<Kernel, CudaFunction>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = ctxs
                .iter()
                .map(|ctx| {
                    let all_kernels = &all_kernels;
                    s.spawn(move || -> Result<_> {
                        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(image.ptx))?;
                        let mut functions = HashMap::new();
                        for &k in all_kernels {
                            let f = module.load_function(&k.name()).map_err(|_| Error::MissingKernel { name: k.name() })?;
                            functions.insert(k, f);
                        }
                        Ok((module, functions))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("module loading thread panicked")).collect()
        });

        let mut ranks = Vec::with_capacity(world);
        for (rank, ((&device, ctx), loaded)) in devices.iter().zip(&ctxs).zip(loaded).enumerate() {
            let (module, functions) = loaded?;
            ranks.push(Rank {
                device,
                stream: ctx.new_stream()?,
                staging_in: PeerBuffer::zeroed(ctx, world * shard_stride)?,
                staging_out: PeerBuffer::zeroed(ctx, world * shard_stride)?,
                oneshot: PeerBuffer::zeroed(ctx, 2 * world * oneshot_stride)?,
                sync: PeerBuffer::zeroed(ctx, sync_area::BYTES)?,
                ctx: ctx.clone(),
                _module: module,
                functions,
                args: CollectiveArgs {
                    input: 0,
                    output: 0,
                    len: 0,
                    piece_len: 0,
                    staging_in: [0; MAX_WORLD],
                    staging_out: [0; MAX_WORLD],
                    sync: [0; MAX_WORLD],
                    shard_stride: shard_stride as u64,
                    timeout_ns: config.timeout.map_or(0, |t| t.as_nanos().min(u64::MAX as u128) as u64),
                    rank: rank as u32,
                    world: world as u32,
                    group_size: 0,
                    tag: 0,
                    transport: 0,
                    _pad: 0,
                },
                launch: Mutex::new(()),
            });
        }
        // Every rank's peer pointers, once: with peer access enabled a
        // cuMemAlloc address is valid on every GPU of the communicator.
        let (ins, outs, syncs): (Vec<u64>, Vec<u64>, Vec<u64>) =
            ranks.iter().map(|r| (r.staging_in.ptr(), r.staging_out.ptr(), r.sync.ptr())).fold(
                (vec![], vec![], vec![]),
                |(mut a, mut b, mut c), (x, y, z)| {
                    a.push(x);
                    b.push(y);
                    c.push(z);
                    (a, b, c)
                },
            );
        for r in &mut ranks {
            r.args.staging_in[..world].copy_from_slice(&ins);
            r.args.staging_out[..world].copy_from_slice(&outs);
            r.args.sync[..world].copy_from_slice(&syncs);
        }
        let mut oneshot_buffers = [0; MAX_WORLD];
        for (slot, r) in oneshot_buffers.iter_mut().zip(&ranks) {
            *slot = r.oneshot.ptr();
        }

        // Blocks of every rank's kernel must be resident together (they
        // wait on each other); ranks sharing a GPU split its capacity.
        let mut resident_blocks = HashMap::new();
        for &k in &all_kernels {
            let mut fewest = MAX_BLOCKS as u32;
            for rank in &ranks {
                let sharing = devices.iter().filter(|&&d| d == rank.device).count() as u32;
                let sms = rank.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
                let per_sm = rank.functions[&k].occupancy_max_active_blocks_per_multiprocessor(THREADS, 0, None)?;
                fewest = fewest.min(sms * per_sm.max(0) as u32 / sharing);
            }
            if fewest == 0 {
                return Err(Error::InvalidConfig(format!("kernel {} cannot launch {THREADS} threads per block on these GPUs", k.name())));
            }
            resident_blocks.insert(k, fewest);
        }

        let oneshot_grid = [Dtype::Bf16, Dtype::F16].iter().fold(ONESHOT_GRID, |g, &d| g.min(resident_blocks[&Kernel::OneShot(d)]));
        let gpu_name = ranks[0].ctx.name()?;
        let thresholds = config.thresholds.unwrap_or_else(|| tuning::builtin(&gpu_name, world));
        #[cfg(feature = "nccl")]
        let nccl = if config.nccl_fallback && !shared && crate::nccl::available() {
            crate::nccl::NcclComms::new(ranks.iter().map(|r| r.stream.clone()).collect()).ok()
        } else {
            None
        };
        let comm = Self {
            ranks,
            config,
            thresholds,
            resident_blocks,
            oneshot_buffers,
            oneshot_stride,
            oneshot_grid,
            gpu_name,
            poisoned: Mutex::new(None),
            #[cfg(feature = "nccl")]
            nccl,
        };
        comm.probe_peers()?;
        Ok(comm)
    }

    /// One store and one load across every ordered pair, by a kernel.
    fn probe_peers(&self) -> Result<()> {
        let world = self.world_size();
        for i in 0..world {
            for j in 0..world {
                if i == j {
                    continue;
                }
                let (a, b) = (&self.ranks[i], &self.ranks[j]);
                let pattern = 0x5EED_0000 | (i as u32) << 8 | j as u32;
                b.sync.write_words(sync_area::PROBE, &[0, pattern])?;
                a.sync.write_words(sync_area::PROBE, &[0, 0])?;
                let token = 0xC0DE_0000 | (j as u32) << 8 | i as u32;
                a.ctx.bind_to_thread()?;
                let remote = b.sync.ptr() + 4 * sync_area::PROBE as u64;
                let local = a.sync.ptr() + 4 * sync_area::PROBE as u64;
                let (mut remote_arg, mut local_arg, mut token_arg) = (remote, local, token);
                let mut params = [
                    &mut remote_arg as *mut u64 as *mut std::ffi::c_void,
                    &mut local_arg as *mut u64 as *mut std::ffi::c_void,
                    &mut token_arg as *mut u32 as *mut std::ffi::c_void,
                ];
                // SAFETY: a's context is bound; peer_probe takes (u32*, u32*, u32);
                // `remote` is b's cuMemAlloc memory with peer access enabled,
                // `local` a's own; we synchronise before they can go away.
                unsafe {
                    raw::launch::launch_with_params(
                        a.functions[&Kernel::PeerProbe].cu_function(),
                        1,
                        32,
                        a.stream.cu_stream(),
                        &mut params,
                    )?
                };
                a.stream.synchronize()?;
                let (mut seen, mut written) = ([0u32; 1], [0u32; 1]);
                a.sync.read_words(sync_area::PROBE, &mut seen)?;
                b.sync.read_words(sync_area::PROBE, &mut written)?;
                if seen[0] != pattern || written[0] != token {
                    return Err(Error::PeerAccessUnavailable {
                        from: a.device,
                        to: b.device,
                        why: format!(
                            "probe read {:#x} (expected {pattern:#x}) and wrote {:#x} (expected {token:#x})",
                            seen[0], written[0]
                        ),
                    });
                }
            }
        }
        for r in &self.ranks {
            r.sync.zero()?;
        }
        Ok(())
    }
}
