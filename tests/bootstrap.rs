//! The multi-process bootstrap with real processes: ranks 1.. are this test
//! binary started again (`rank_process`, which runs only when a test sets
//! its environment), rank 0 is the test itself. A rank killed with SIGKILL
//! after the rendezvous is a typed error on the others within a second.
use flashcomm::bootstrap::{Bootstrap, BootstrapError, Identity, Listener};
use flashcomm::{Config, KERNELS};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "FLASHCOMM_BOOTSTRAP_CHILD";
const T: Duration = Duration::from_secs(20);

fn identity() -> Identity {
    Identity::current(&Config::default(), &KERNELS)
}

/// Starts rank `rank` of `world` as a process; `mode` is `gather` (join,
/// two rounds of all_gather, exit 0 if they are right), `sleep` (join,
/// then sleep until killed) or `aborted` (join, then expect the next
/// all_gather to fail because another rank is gone) or `join-aborted`
/// (expect rank 0 to abort the rendezvous).
fn spawn_rank(id: &str, rank: usize, world: usize, mode: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "rank_process", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{id} {rank} {world} {mode}"))
        .stdout(Stdio::null()) // its own libtest summary; a failure shows on stderr and in the exit status
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a rank process")
}

fn payload(rank: usize) -> Vec<u8> {
    format!("rank {rank} pid {}", std::process::id()).into_bytes()
}

#[test]
#[ignore = "a rank process that the other tests of this file start"]
fn rank_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split(' ').collect();
    let id = parts[0].parse().expect("the id parses");
    let (rank, world, mode) = (parts[1].parse().unwrap(), parts[2].parse().unwrap(), parts[3]);
    if mode == "env" {
        // Started by a launcher with FLASHCOMM_RANK / _WORLD_SIZE / _UNIQUE_ID.
        let (mut boot, table) = Bootstrap::from_env(&identity(), &payload(rank), T).expect("from_env");
        assert_eq!((boot.rank(), boot.world(), table.len()), (rank, world, world));
        let all = boot.all_gather(&[rank as u8], T).expect("all_gather");
        assert_eq!(all, (0..world).map(|r| vec![r as u8]).collect::<Vec<_>>());
        return;
    }
    if mode == "join-aborted" {
        match Bootstrap::join(&id, rank, world, &identity(), &payload(rank), T) {
            Err(BootstrapError::Aborted { rank: 0, why }) => assert!(why.contains("timed out"), "{why}"),
            other => panic!("expected rank 0's abort during the join, got {:?}", other.map(|_| ())),
        }
        return;
    }
    let (mut boot, table) = Bootstrap::join(&id, rank, world, &identity(), &payload(rank), T).expect("join");
    assert_eq!(table.len(), world);
    assert_eq!(table[rank], payload(rank));
    match mode {
        "gather" => {
            for round in 0..2u8 {
                let all = boot.all_gather(&[rank as u8, round], T).expect("all_gather");
                let want: Vec<Vec<u8>> = (0..world).map(|r| vec![r as u8, round]).collect();
                assert_eq!(all, want);
            }
        }
        "sleep" => std::thread::sleep(Duration::from_secs(60)),
        "aborted" => match boot.all_gather(b"x", T) {
            Err(BootstrapError::Aborted { rank: 0, why }) => assert!(why.contains("rank 1"), "{why}"),
            other => panic!("expected rank 0's abort, got {other:?}"),
        },
        other => panic!("unknown mode {other}"),
    }
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().expect("wait");
    assert!(status.success(), "{what} exited with {status}");
}

#[test]
fn three_processes_meet_and_gather() {
    let listener = Listener::loopback().unwrap();
    let id = listener.id().to_string();
    let world = 3;
    let children: Vec<Child> = (1..world).map(|r| spawn_rank(&id, r, world, "gather")).collect();
    let (mut boot, table) = Bootstrap::root(listener, world, &identity(), &payload(0), T).expect("rendezvous");
    for (r, p) in table.iter().enumerate() {
        assert!(p.starts_with(format!("rank {r} pid ").as_bytes()), "{:?}", String::from_utf8_lossy(p));
    }
    // Every rank is its own process.
    let pids: std::collections::BTreeSet<&[u8]> = table.iter().map(|p| p.rsplit(|&b| b == b' ').next().unwrap()).collect();
    assert_eq!(pids.len(), world);
    for round in 0..2u8 {
        let all = boot.all_gather(&[0, round], T).expect("all_gather");
        assert_eq!(all, (0..world).map(|r| vec![r as u8, round]).collect::<Vec<_>>());
    }
    for (r, c) in children.into_iter().enumerate() {
        wait_ok(c, &format!("rank {}", r + 1));
    }
}

/// A launcher's flow: one id made ahead ([`UniqueId::generate`]) and the
/// same three variables for every process, rank 0 included.
#[test]
fn processes_started_from_the_environment_meet() {
    use flashcomm::bootstrap::{env, UniqueId};
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let id = UniqueId::generate(free).unwrap().to_string();
    let world = 3;
    let children: Vec<Child> = (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "rank_process", "--include-ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{id} {r} {world} env"))
                .env(env::RANK, r.to_string())
                .env(env::WORLD_SIZE, world.to_string())
                .env(env::UNIQUE_ID, &id)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a rank process")
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        wait_ok(c, &format!("rank {r}"));
    }
}

#[test]
fn a_killed_rank_is_an_error_within_a_second() {
    let listener = Listener::loopback().unwrap();
    let id = listener.id().to_string();
    let mut sleeper = spawn_rank(&id, 1, 3, "sleep");
    let survivor = spawn_rank(&id, 2, 3, "aborted");
    let (mut boot, _) = Bootstrap::root(listener, 3, &identity(), &payload(0), T).expect("rendezvous");
    sleeper.kill().expect("SIGKILL rank 1");
    let killed = Instant::now();
    match boot.all_gather(b"0", T) {
        Err(BootstrapError::PeerClosed { rank: 1 }) => {}
        other => panic!("expected rank 1 to be reported closed, got {other:?}"),
    }
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_secs(1), "rank 0 noticed after {noticed:?}");
    println!("a_killed_rank_is_an_error_within_a_second: rank 0 saw rank 1's death after {noticed:?}");
    let _ = sleeper.wait();
    wait_ok(survivor, "rank 2 (expects rank 0's abort)");
}

/// A rank whose process starts but never joins: rank 0 and the ranks that
/// did join get a typed error at the deadline, not a hang.
#[test]
fn a_rank_that_never_joins_is_a_timeout() {
    let listener = Listener::loopback().unwrap();
    let id = listener.id().to_string();
    let joined = spawn_rank(&id, 1, 3, "join-aborted");
    let start = Instant::now();
    match Bootstrap::root(listener, 3, &identity(), &payload(0), Duration::from_secs(2)) {
        Err(BootstrapError::Timeout { waiting_for, .. }) => assert!(waiting_for.contains('2'), "{waiting_for}"),
        other => panic!("expected a timeout, got {:?}", other.map(|_| ())),
    }
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    wait_ok(joined, "rank 1 (expects rank 0's abort during its join)");
}
