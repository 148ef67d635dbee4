//! Ranks in separate processes (`Communicator::init_rank`): every rank is
//! this test binary started again (`child`, chosen by `RANK_ENV`), rank 0
//! prints the bootstrap id, the test hands it to the others and watches
//! them. The bit-exactness bodies are the single-process tests' own, run on
//! each process's rank; the failure tests kill a rank with SIGKILL, or keep
//! one alive that never calls.
use crate::allreduce::{back_to_back_calls, graph_replay_cases, random_cases};
use crate::common::*;
use flashcomm::bootstrap::{Bootstrap, Identity, Listener};
use flashcomm::reference::reference_all_reduce;
use flashcomm::synth::Rng;
use flashcomm::{CallOptions, Communicator, Config, Error, Quantization, KERNELS};
use half::bf16;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Set in a rank process: `<mode> <rank> <devices, comma-separated> <seed> [<id>]`.
pub const RANK_ENV: &str = "FLASHCOMM_GPU_TEST_RANK";
const JOIN_TIME: Duration = Duration::from_secs(120);
/// Set in a rank process that sees only its own GPU (as device 0).
const ONE_GPU_EACH: &str = "FLASHCOMM_GPU_TEST_ONE_GPU_EACH";

/// What the rank processes say on their stdout, one line at a time, with
/// when it arrived; lines not asked for yet are kept.
struct Lines {
    rx: Receiver<(usize, String, Instant)>,
    kept: std::cell::RefCell<Vec<(usize, String, Instant)>>,
}

impl Lines {
    /// The first line of rank `rank` (not taken before) that starts with
    /// `prefix`, waiting up to `timeout` for it.
    fn expect(&self, rank: usize, prefix: &str, timeout: Duration) -> Result<(String, Instant), libtest_mimic::Failed> {
        let wanted = |(r, line, _): &(usize, String, Instant)| *r == rank && line.starts_with(prefix);
        let mut kept = self.kept.borrow_mut();
        if let Some(i) = kept.iter().position(wanted) {
            let (_, line, at) = kept.remove(i);
            return Ok((line, at));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(got) if wanted(&got) => return Ok((got.1, got.2)),
                Ok(other) => kept.push(other),
                Err(_) => return Err(format!("rank {rank} did not say {prefix:?} within {timeout:?}").into()),
            }
        }
    }
}

/// The rank processes of one test; any still running when it ends (a
/// failed check included) is killed.
struct Children(Vec<Child>);

impl std::ops::Deref for Children {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Children {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts rank processes `0..world` on `devices` in `mode`: rank 0 first,
/// then the others with the id it prints.
fn spawn_ranks(mode: &str, devices: &[usize], seed: u64) -> Result<(Children, Lines), libtest_mimic::Failed> {
    spawn_ranks_seeing(mode, devices, seed, false)
}

/// [`spawn_ranks`]; with `one_gpu_each`, each process sees only its GPU
/// (`CUDA_VISIBLE_DEVICES`, as launchers set it) and uses it as device 0.
fn spawn_ranks_seeing(mode: &str, devices: &[usize], seed: u64, one_gpu_each: bool) -> Result<(Children, Lines), libtest_mimic::Failed> {
    let (tx, rx) = channel();
    let lines = Lines { rx, kept: Default::default() };
    let list = devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    let spawn = |rank: usize, id: &str| -> Result<Child, libtest_mimic::Failed> {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        if one_gpu_each {
            command.env("CUDA_VISIBLE_DEVICES", devices[rank].to_string()).env(ONE_GPU_EACH, "1");
        }
        let mut child = command
            .env(RANK_ENV, format!("{mode} {rank} {list} {seed} {id}").trim_end())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start rank {rank}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("  [rank {rank}] {line}");
                let _ = tx.send((rank, line, Instant::now()));
            }
        });
        Ok(child)
    };
    let mut children = Children(vec![spawn(0, "")?]);
    let (line, _) = lines.expect(0, "id ", JOIN_TIME)?;
    let id = line["id ".len()..].to_string();
    for rank in 1..devices.len() {
        children.push(spawn(rank, &id)?);
    }
    Ok((children, lines))
}

/// Waits for every child (killing all of them after `timeout`); each must exit 0.
fn wait_all(children: &mut [Child], timeout: Duration, what: &str) -> TestResult {
    let deadline = Instant::now() + timeout;
    let mut failures = Vec::new();
    for (rank, child) in children.iter_mut().enumerate() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    failures.push(format!("rank {rank} exited with {status}"));
                    break;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("rank {rank} did not finish within {timeout:?} (killed)"));
                    break;
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", failures.join("; ")).into())
    }
}

/// Devices for `world` ranks on the GPUs there are (sharing where fewer).
fn devices(world: usize) -> Vec<usize> {
    let gpus = flashcomm::gpu_count().max(1);
    (0..world).map(|r| r % gpus).collect()
}

/// Random cases (the single-process suite's), CUDA-graph replays and
/// back-to-back queued calls with one process per rank, bit-exact on every
/// rank: W = 2 on two GPUs, then W = 3 (two processes sharing GPU 0).
pub fn random_cases_bit_exact() -> TestResult {
    let seed = seed("process::random_cases_bit_exact");
    for world in [2, 3] {
        let (mut children, _lines) = spawn_ranks("cases", &devices(world), seed)?;
        wait_all(&mut children, Duration::from_secs(400), &format!("W={world}"))?;
    }
    Ok(())
}

/// Each process sees only its own GPU (`CUDA_VISIBLE_DEVICES`, as
/// launchers set it): ranks tell GPUs apart by UUID, and IPC maps a GPU the
/// process cannot see. Bit-exact as above.
pub fn one_visible_gpu_per_process_bit_exact() -> TestResult {
    let seed = seed("process::one_visible_gpu_per_process_bit_exact");
    let (mut children, _lines) = spawn_ranks_seeing("cases", &[0, 1], seed, true)?;
    wait_all(&mut children, Duration::from_secs(400), "W=2, one visible GPU per process")
}

/// Two processes on one GPU (`Config::shared_devices`): the driver
/// time-slices their contexts, and the collectives stay bit-exact.
pub fn shared_gpu_processes_bit_exact() -> TestResult {
    let seed = seed("process::shared_gpu_processes_bit_exact");
    let (mut children, _lines) = spawn_ranks("cases", &[0, 0], seed)?;
    wait_all(&mut children, Duration::from_secs(400), "W=2 on GPU 0")
}

/// A rank process killed with SIGKILL while its peer waits in a collective,
/// with the watchdog off: only the watcher of the processes can end the
/// wait. The survivor gets `PeerFailed` naming the dead rank within a
/// second, refuses new calls, and its drop returns promptly and frees its
/// GPU memory.
pub fn killed_rank_is_an_error() -> TestResult {
    let (mut children, lines) = spawn_ranks("killed", &devices(2), seed("process::killed_rank_is_an_error"))?;
    lines.expect(1, "ready", JOIN_TIME)?;
    lines.expect(0, "waiting", JOIN_TIME)?;
    // Let the survivor's kernel spin for a while first.
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    ctx(children[1].kill(), "kill rank 1")?;
    let _ = children[1].wait();
    let (line, at) = lines.expect(0, "error", Duration::from_secs(30))?;
    let took = at.saturating_duration_since(killed_at);
    println!("process::killed_rank_is_an_error: rank 0 reported {took:?} after the kill: {line}");
    if took > Duration::from_secs(1) {
        return Err(format!("the error came {took:?} after the kill (limit 1 s; watchdog off)").into());
    }
    wait_all(&mut children[..1], Duration::from_secs(60), "rank 0")
}

/// W = 3, watchdog off: ranks 1 and 2 wait in a call when rank 0's
/// process (the bootstrap's root) is killed. Both report `PeerFailed`
/// naming rank 0 within a second: each sees its connection to rank 0 end
/// and writes rank 0's poison word into its own and the other's sync area
/// (through the mapping).
pub fn killed_root_is_an_error_everywhere() -> TestResult {
    let (mut children, lines) = spawn_ranks("killed-root", &devices(3), seed("process::killed_root_is_an_error_everywhere"))?;
    lines.expect(0, "ready", JOIN_TIME)?;
    lines.expect(1, "waiting", JOIN_TIME)?;
    lines.expect(2, "waiting", JOIN_TIME)?;
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    ctx(children[0].kill(), "kill rank 0")?;
    let _ = children[0].wait();
    for rank in [1, 2] {
        let (line, at) = lines.expect(rank, "error", Duration::from_secs(30))?;
        let took = at.saturating_duration_since(killed_at);
        println!("process::killed_root_is_an_error_everywhere: rank {rank} reported {took:?} after the kill: {line}");
        if took > Duration::from_secs(1) {
            return Err(format!("rank {rank}'s error came {took:?} after the kill (limit 1 s; watchdog off)").into());
        }
    }
    wait_all(&mut children[1..], Duration::from_secs(60), "ranks 1 and 2")
}

/// W = 2, watchdog off: rank 0 waits in a call that rank 1 never makes;
/// rank 1 calls `recover()` (it has no kernel running to pass an abort
/// on: its `recover()` must stop rank 0's kernel through the mapping).
/// Rank 0's call ends `Aborted`, rank 0 recovers too, and both then make an
/// exact call.
pub fn recover_across_processes() -> TestResult {
    let (mut children, _lines) = spawn_ranks("recover", &devices(2), seed("process::recover_across_processes"))?;
    wait_all(&mut children, Duration::from_secs(120), "W=2 recover")
}

/// A rank process that joins and never calls: its peer's call ends with
/// `PeerTimeout` naming it within the watchdog time plus a second, and the
/// peer's drop returns within its closing deadline. The silent rank still
/// maps the peer's buffers, so the driver keeps them until it ends (killed
/// here): then the peer's GPU memory comes back.
pub fn never_calling_rank_times_out() -> TestResult {
    let (mut children, lines) = spawn_ranks("never-calls", &devices(2), seed("process::never_calling_rank_times_out"))?;
    lines.expect(1, "ready", JOIN_TIME)?;
    let dropped = lines.expect(0, "dropped", Duration::from_secs(60));
    let _ = children[1].kill();
    let _ = children[1].wait();
    dropped?;
    wait_all(&mut children[..1], Duration::from_secs(60), "rank 0")
}

/// The rank process's side: runs `spec`'s mode and returns the exit code.
pub fn child(spec: &str) -> i32 {
    match run_child(spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rank process [{spec}]: {}", e.message().unwrap_or("failed"));
            1
        }
    }
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

fn run_child(spec: &str) -> TestResult {
    let parts: Vec<&str> = spec.split(' ').collect();
    let (mode, rank, seed) = (parts[0], parts[1].parse::<usize>()?, parts[3].parse::<u64>()?);
    let devices: Vec<usize> = parts[2].split(',').map(str::parse).collect::<Result<_, _>>()?;
    let world = devices.len();
    let device = if std::env::var(ONE_GPU_EACH).is_ok() { 0 } else { devices[rank] };
    let shared = (1..world).any(|i| devices[..i].contains(&devices[i]));
    let base = Config { shared_devices: shared, ..exact_config() };
    let config = match mode {
        // Time-sliced GPUs (two processes on one) are slow to meet.
        "cases" if base.shared_devices => Config { timeout: Some(Duration::from_secs(10)), max_piece_elems: 1 << 18, ..base },
        "cases" => Config { max_piece_elems: 1 << 18, ..base },
        "killed" | "killed-root" | "recover" => Config { timeout: None, ..base },
        _ => Config { timeout: Some(Duration::from_millis(500)), ..base },
    };
    let identity = Identity::current(&config, &KERNELS);
    let bootstrap = if rank == 0 {
        let listener = ctx(Listener::loopback(), "listen")?;
        say(&format!("id {}", listener.id()));
        ctx(Bootstrap::root(listener, world, &identity, &[], JOIN_TIME), "bootstrap root")?.0
    } else {
        let id = ctx(parts[4].parse(), "the id")?;
        ctx(Bootstrap::join(&id, rank, world, &identity, &[], JOIN_TIME), "bootstrap join")?.0
    };
    let free_before = ctx(free_memory(device), "free memory")?;
    let comm = ctx(Communicator::init_rank(bootstrap, device, config, &KERNELS), &format!("init_rank {rank} on GPU {device}"))?;
    let free_with_comm = ctx(free_memory(device), "free memory")?;
    if comm.local_ranks() != [rank] || comm.world_size() != world {
        return Err(format!("local ranks {:?} of {} (expected [{rank}] of {world})", comm.local_ranks(), comm.world_size()).into());
    }
    match mode {
        "cases" => {
            let mut rng = Rng::new(seed);
            let cases = if comm.config().shared_devices { 40 } else { 200 };
            let comms = BTreeMap::from([(world, comm)]);
            random_cases(&comms, cases, &mut rng, &format!("process rank {rank}"))?;
            let comm = &comms[&world];
            graph_replay_cases(comm, &mut rng)?;
            let calls = back_to_back_calls(comm, &mut rng)?;
            per_rank_call(comm, rank, &mut rng)?;
            let gathered = ctx(comm.all_gather_host(&[rank as u8, 7], Duration::from_secs(30)), "all_gather_host")?;
            if gathered != (0..world).map(|r| vec![r as u8, 7]).collect::<Vec<_>>() {
                return Err(format!("all_gather_host returned {gathered:?}").into());
            }
            say(&format!("ok: {cases} random cases, 4 graphs x 3 replays, {calls} back-to-back calls, a per-rank call: bit-exact"));
            Ok(())
        }
        "killed" if rank == 1 => {
            say("ready");
            std::thread::sleep(Duration::from_secs(60));
            Err("rank 1 was not killed".into())
        }
        "killed" => {
            let mut x = ctx(comm.stream(0)?.clone_htod(&vec![bf16::ONE; 1 << 20]), "upload")?;
            ctx(comm.all_reduce_in_place(std::slice::from_mut(&mut x)), "queue a call")?;
            say("waiting");
            let started = Instant::now();
            match comm.synchronize() {
                Err(Error::PeerFailed { rank: 0, peer: 1 }) => say(&format!("error after {:?}: PeerFailed naming rank 1", started.elapsed())),
                other => return Err(format!("expected PeerFailed {{ rank: 0, peer: 1 }}, got {other:?}").into()),
            }
            // The watcher's word, not the kernel's error: it saw the process end.
            match comm.all_reduce_in_place(std::slice::from_mut(&mut x)) {
                Err(Error::Poisoned(why)) if why.contains("rank 1's process ended") => {}
                other => return Err(format!("a call after the peer died: expected Poisoned saying rank 1's process ended, got {other:?}").into()),
            }
            if comm.recover().is_ok() {
                return Err("recover() succeeded with a dead peer".into());
            }
            drop(x);
            dropped_promptly_and_freed(comm, device, (free_before, free_with_comm), Duration::from_secs(2))
        }
        "killed-root" if rank == 0 => {
            say("ready");
            std::thread::sleep(Duration::from_secs(60));
            Err("rank 0 was not killed".into())
        }
        "killed-root" => {
            let mut x = ctx(comm.stream(rank)?.clone_htod(&vec![bf16::ONE; 1 << 20]), "upload")?;
            ctx(comm.all_reduce_rank_in_place(rank, &mut x, &CallOptions::default()), "queue a call")?;
            say("waiting");
            let started = Instant::now();
            match comm.synchronize() {
                Err(Error::PeerFailed { rank: r, peer: 0 }) if r == rank => say(&format!("error after {:?}: PeerFailed naming rank 0", started.elapsed())),
                other => return Err(format!("expected PeerFailed {{ rank: {rank}, peer: 0 }}, got {other:?}").into()),
            }
            drop(x);
            let started = Instant::now();
            drop(comm);
            let took = started.elapsed();
            say(&format!("dropped in {took:?}"));
            if took > Duration::from_secs(2) {
                return Err(format!("drop took {took:?} with rank 0 dead (limit 2 s)").into());
            }
            Ok(())
        }
        "recover" => {
            let mut rng = Rng::new(seed);
            if rank == 0 {
                let mut x = ctx(comm.stream(0)?.clone_htod(&vec![bf16::ONE; 1 << 20]), "upload")?;
                ctx(comm.all_reduce_in_place(std::slice::from_mut(&mut x)), "queue a call")?;
                match comm.synchronize() {
                    Err(Error::Aborted { rank: 0 }) => say("aborted by rank 1's recover()"),
                    other => return Err(format!("expected Aborted {{ rank: 0 }} (rank 1's recover), got {other:?}").into()),
                }
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
            let started = Instant::now();
            ctx(comm.recover(), "recover()")?;
            say(&format!("recovered in {:?}", started.elapsed()));
            per_rank_call(&comm, rank, &mut rng)?;
            say("ok: an exact call after recover()");
            Ok(())
        }
        "never-calls" if rank == 1 => {
            say("ready");
            std::thread::sleep(Duration::from_secs(60));
            Ok(())
        }
        "never-calls" => {
            let mut x = ctx(comm.stream(0)?.clone_htod(&vec![bf16::ONE; 1 << 20]), "upload")?;
            let started = Instant::now();
            ctx(comm.all_reduce_in_place(std::slice::from_mut(&mut x)), "queue a call")?;
            let result = comm.synchronize();
            let took = started.elapsed();
            match result {
                Err(Error::PeerTimeout { rank: 0, peer: 1, .. }) if took < Duration::from_millis(1500) => {
                    say(&format!("error after {took:?}: {}", result.unwrap_err()))
                }
                other => return Err(format!("expected PeerTimeout naming rank 1 within 1.5 s, got {other:?} after {took:?}").into()),
            }
            drop(x);
            // The closing barrier waits for the silent rank up to its
            // deadline (10 s); the test kills it once this one has dropped.
            dropped_promptly_and_freed(comm, device, (free_before, free_with_comm), Duration::from_secs(12))
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// One `all_reduce_rank` (the per-rank entry point) with INT8, bit-exact.
fn per_rank_call(comm: &Communicator, rank: usize, rng: &mut Rng) -> TestResult {
    let world = comm.world_size();
    let inputs = make_inputs::<bf16>(rng, DataKind::Activations, world, 1 << 20);
    let refs: Vec<&[bf16]> = inputs.iter().map(|v| v.as_slice()).collect();
    let expected = ctx(reference_all_reduce(&refs, &Quantization::INT8), "reference")?;
    let stream = comm.stream(rank)?;
    let input = ctx(stream.clone_htod(&inputs[rank]), "upload")?;
    let mut output = ctx(stream.clone_htod(&vec![bf16::from_bits(0xFFFF); 1 << 20]), "poison")?;
    let opts = CallOptions { algorithm: Some(flashcomm::Algorithm::Flash), quantization: Some(Quantization::INT8), ..Default::default() };
    ctx(comm.all_reduce_rank(rank, &input, &mut output, &opts), "all_reduce_rank")?;
    ctx(comm.synchronize_rank(rank), "synchronize_rank")?;
    compare_bits(&[ctx(stream.clone_dtoh(&output), "download")?], &expected, "per-rank INT8 call")
}

fn free_memory(device: usize) -> Result<usize, cudarc::driver::DriverError> {
    let ctx = cudarc::driver::CudaContext::new(device)?;
    ctx.bind_to_thread()?;
    Ok(cudarc::driver::result::mem_get_info()?.0)
}

/// Drops `comm` within `limit`, and the GPU's free memory comes back to
/// what it was before the communicator (within 16 MiB; the communicator
/// took at least 64 MiB) within 5 s (the driver frees a buffer once no live
/// process maps it).
fn dropped_promptly_and_freed(comm: Communicator, device: usize, (free_before, free_with_comm): (usize, usize), limit: Duration) -> TestResult {
    if free_with_comm + (64 << 20) > free_before {
        return Err(format!("the communicator took only {} MiB: the memory check would prove nothing", free_before.saturating_sub(free_with_comm) >> 20).into());
    }
    let started = Instant::now();
    drop(comm);
    let took = started.elapsed();
    say(&format!("dropped in {took:?}"));
    if took > limit {
        return Err(format!("drop took {took:?} (limit {limit:?})").into());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let free_after = ctx(free_memory(device), "free memory")?;
        if free_after + (16 << 20) >= free_before {
            say(&format!("ok: free memory {} MiB before the communicator, {} MiB after its drop", free_before >> 20, free_after >> 20));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} MiB of GPU memory not freed 5 s after drop", (free_before - free_after) >> 20).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
