//! How ranks in separate processes find each other (`../docs/design.md`
//! R20): an NCCL-like unique id (an address and a 32-byte secret) that rank
//! 0 creates and a launcher hands to the others, a star of TCP connections
//! through rank 0, and two collectives over it: the rendezvous (every rank's
//! identity checked, every rank's payload to every rank) and `all_gather`
//! (what the communicator exchanges later: IPC handles, probe results).
//!
//! Everything a peer sends is untrusted input:
//! - frames are length-prefixed and capped at [`MAX_FRAME`] bytes, decoded
//!   with `postcard` (a documented, stable encoding), and a frame that does
//!   not decode is a typed error, never a panic;
//! - a connection must present the id's secret (compared in constant time)
//!   before anything else it says is believed; a connection without it is
//!   closed and the root keeps waiting for the real ranks (a stray or
//!   hostile connection cannot take a rank or end the rendezvous);
//! - a peer with the secret that disagrees (world size, rank taken or out
//!   of range, library version, kernel image, configuration, host) ends the
//!   rendezvous for every rank with an error naming it and what differs;
//! - every wait has a deadline: a rank that never connects, or stops
//!   answering, is a [`BootstrapError::Timeout`] naming it, never a hang;
//! - the listener binds to loopback unless told otherwise. The secret only
//!   proves that the peer knows the id (it travels in clear on the socket,
//!   as NCCL's magic does): keep the id out of logs and off shared hosts.
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Version of the bootstrap messages; ranks must agree on it.
pub const PROTOCOL: u32 = 1;
/// Largest frame a rank accepts (bytes after the length prefix).
pub const MAX_FRAME: usize = 1 << 20;
/// Opens every connection: tells a flashcomm peer from stray traffic.
const MAGIC: [u8; 8] = *b"FLASHCOM";
/// The text form's prefix, with the protocol version.
const ID_PREFIX: &str = "flashcomm1";

/// Everything that can go wrong while ranks meet and talk.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A socket call failed.
    #[error("bootstrap socket error ({what}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The unique id's text is not one `UniqueId::to_string` writes.
    #[error("not a flashcomm unique id: {0}")]
    BadId(&'static str),
    /// A peer did not connect or answer before the deadline.
    #[error("bootstrap timed out after {after:?} waiting for {waiting_for} ({rejected} connection(s) without the id's secret or with a bad frame were closed meanwhile)")]
    Timeout {
        /// How long it waited.
        after: Duration,
        /// Which ranks it waited for.
        waiting_for: String,
        /// Connections closed because they did not present the secret or sent a bad frame.
        rejected: usize,
    },
    /// A frame longer than [`MAX_FRAME`].
    #[error("{from}: a frame of {len} bytes (the limit is {MAX_FRAME})")]
    FrameTooLarge {
        /// Who sent it.
        from: String,
        /// Its announced length.
        len: usize,
    },
    /// A frame that does not decode, or a message out of turn.
    #[error("{from}: malformed or unexpected message: {why}")]
    Malformed {
        /// Who sent it.
        from: String,
        /// What was wrong.
        why: String,
    },
    /// A peer with the secret disagrees with this rank.
    #[error("rank {rank} does not match: {what}")]
    Mismatch {
        /// The rank that differs.
        rank: usize,
        /// What differs.
        what: String,
    },
    /// A peer closed its connection (its process ended or dropped the bootstrap).
    #[error("rank {rank} closed its bootstrap connection")]
    PeerClosed {
        /// The rank.
        rank: usize,
    },
    /// Another rank ended the bootstrap and said why.
    #[error("rank {rank} aborted the bootstrap: {why}")]
    Aborted {
        /// The rank that aborted.
        rank: usize,
        /// Its reason.
        why: String,
    },
    /// A bad argument of this rank's own call.
    #[error("invalid bootstrap argument: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, BootstrapError>;

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BootstrapError {
    move |source| BootstrapError::Io { what, source }
}

/// Where rank 0 listens and the secret every rank must present. The text
/// form (`Display` / `FromStr`) is what a launcher hands to the other ranks;
/// it holds the secret: `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct UniqueId {
    addr: SocketAddr,
    secret: [u8; 32],
}

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UniqueId").field("addr", &self.addr).field("secret", &"<hidden>").finish()
    }
}

impl std::fmt::Display for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{ID_PREFIX}/{}/", self.addr)?;
        self.secret.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for UniqueId {
    type Err = BootstrapError;

    fn from_str(text: &str) -> Result<Self> {
        let mut parts = text.trim().split('/');
        if parts.next() != Some(ID_PREFIX) {
            return Err(BootstrapError::BadId("it does not start with flashcomm1/ (another protocol version?)"));
        }
        let addr = parts.next().and_then(|a| a.parse().ok()).ok_or(BootstrapError::BadId("no socket address"))?;
        let hex = parts.next().ok_or(BootstrapError::BadId("no secret"))?;
        if parts.next().is_some() || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BootstrapError::BadId("the secret is not 64 hex digits"));
        }
        let mut secret = [0u8; 32];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| BootstrapError::BadId("the secret is not 64 hex digits"))?;
        }
        Ok(Self { addr, secret })
    }
}

impl UniqueId {
    /// A new id for rank 0 to listen at `addr` (a fixed port: a launcher
    /// makes the id before any rank starts, hands the same one to every
    /// rank, rank 0 included, and rank 0 listens with [`Listener::for_id`]),
    /// with a fresh secret from the operating system's random source.
    pub fn generate(addr: SocketAddr) -> Result<Self> {
        if addr.port() == 0 {
            return Err(BootstrapError::Invalid("an id made ahead of rank 0 needs a fixed port (0 picks one only when rank 0 listens)".into()));
        }
        Ok(Self { addr, secret: random_secret()? })
    }

    /// The address rank 0 listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn random_secret() -> Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| BootstrapError::Invalid(format!("no random source for the secret: {e}")))?;
    Ok(secret)
}

/// The environment a launcher sets for each rank's process
/// ([`Bootstrap::from_env`]).
pub mod env {
    /// This process's rank, `0..world`.
    pub const RANK: &str = "FLASHCOMM_RANK";
    /// The number of ranks.
    pub const WORLD_SIZE: &str = "FLASHCOMM_WORLD_SIZE";
    /// The [`UniqueId`](super::UniqueId) in its text form, the same for
    /// every rank (rank 0 listens at its address).
    pub const UNIQUE_ID: &str = "FLASHCOMM_UNIQUE_ID";
}

/// Rank 0's listening socket and the id that names it.
#[derive(Debug)]
pub struct Listener {
    id: UniqueId,
    socket: TcpListener,
}

impl Listener {
    /// Listens on `127.0.0.1` (a free port) with a fresh secret from the
    /// operating system's random source.
    pub fn loopback() -> Result<Self> {
        Self::bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))
    }

    /// Listens on `addr` (port 0: a free port). Anything but loopback lets
    /// other hosts connect: they still need the secret.
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let socket = TcpListener::bind(addr).map_err(io("bind"))?;
        let addr = socket.local_addr().map_err(io("local address"))?;
        Ok(Self { id: UniqueId { addr, secret: random_secret()? }, socket })
    }

    /// Listens at the address of an id a launcher made
    /// ([`UniqueId::generate`]), with its secret.
    pub fn for_id(id: &UniqueId) -> Result<Self> {
        let socket = TcpListener::bind(id.addr).map_err(io("bind the id's address"))?;
        Ok(Self { id: id.clone(), socket })
    }

    /// The id to hand to the other ranks.
    pub fn id(&self) -> &UniqueId {
        &self.id
    }
}

/// What every rank must agree on before they share memory: checked field by
/// field at the rendezvous (docs/design.md R20).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// flashcomm's version.
    pub library: String,
    /// A hash of the kernel image (PTX and SASS): peers read each other's
    /// flag areas, so their kernels must be the same.
    pub kernels: u64,
    /// The communicator configuration, as text.
    pub config: String,
    /// The host (boot id and host name): IPC needs one machine.
    pub host: String,
}

impl Identity {
    /// This process's identity for a communicator with `config` and the
    /// kernel image `image`.
    pub fn current(config: &crate::Config, image: &crate::KernelImage) -> Self {
        let mut hash = Fnv::default();
        hash.write(image.ptx().as_bytes());
        for sass in image.sass() {
            hash.write(&[sass.arch().0 as u8, sass.arch().1 as u8]);
            hash.write(sass.cubin());
        }
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Self {
            library: env!("CARGO_PKG_VERSION").into(),
            kernels: hash.0,
            config: format!("{config:?}"),
            host: format!("{} {}", name.trim(), boot.trim()),
        }
    }

    /// The first field where `other` differs, as text.
    pub(crate) fn difference(&self, other: &Identity) -> Option<String> {
        if self.library != other.library {
            return Some(format!("flashcomm {} against {}", other.library, self.library));
        }
        if self.kernels != other.kernels {
            return Some(format!("kernel image {:#018x} against {:#018x}", other.kernels, self.kernels));
        }
        if self.config != other.config {
            return Some(format!("configuration {} against {}", other.config, self.config));
        }
        if self.host != other.host {
            return Some(format!("host {:?} against {:?} (ranks must share one machine)", other.host, self.host));
        }
        None
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Every message of the protocol.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// A rank's first message to rank 0.
    Hello { magic: [u8; 8], protocol: u32, secret: [u8; 32], rank: u32, world: u32, identity: Identity, payload: Vec<u8> },
    /// Rank 0's answer to a rank that joined: every rank's payload.
    Table { payloads: Vec<Vec<u8>> },
    /// A rank's part of an `all_gather` (to rank 0).
    Gather { round: u64, data: Vec<u8> },
    /// Every rank's part of an `all_gather` (from rank 0).
    Scatter { round: u64, parts: Vec<Vec<u8>> },
    /// The sender ends the bootstrap.
    Abort { rank: u32, why: String },
}

/// A connection the peer's end closed or reset (its process died: a
/// SIGKILLed process's sockets may reset rather than close) is `PeerClosed`
/// when the peer's rank is known.
fn closed_or_io(e: std::io::Error, rank: Option<usize>, what: &'static str) -> BootstrapError {
    let closed = matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof);
    match rank {
        Some(rank) if closed => BootstrapError::PeerClosed { rank },
        _ => BootstrapError::Io { what, source: e },
    }
}

/// Writes one frame: a little-endian u32 length, then the message, before
/// `deadline` (a peer that stops reading cannot block the sender).
fn send(stream: &mut TcpStream, message: &Message, deadline: Instant) -> Result<()> {
    let body = postcard::to_allocvec(message).map_err(|e| BootstrapError::Invalid(format!("cannot encode a message: {e}")))?;
    if body.len() > MAX_FRAME {
        return Err(BootstrapError::Invalid(format!("a message of {} bytes exceeds the frame limit {MAX_FRAME}", body.len())));
    }
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left)).map_err(io("set write timeout"))?;
    stream.write_all(&frame).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => BootstrapError::Timeout { after: Duration::ZERO, waiting_for: "a peer to read".into(), rejected: 0 },
        _ => BootstrapError::Io { what: "send", source: e },
    })
}

/// Reads one frame from `from` before `deadline`: a length within
/// [`MAX_FRAME`], then a message that decodes. EOF is `PeerClosed` when the
/// peer's rank is known (`rank`).
fn receive(stream: &mut TcpStream, from: &str, rank: Option<usize>, deadline: Instant) -> Result<Message> {
    let mut len = [0u8; 4];
    read_exact_by(stream, &mut len, from, rank, deadline)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(BootstrapError::FrameTooLarge { from: from.into(), len });
    }
    let mut body = vec![0u8; len];
    read_exact_by(stream, &mut body, from, rank, deadline)?;
    postcard::from_bytes(&body).map_err(|e| BootstrapError::Malformed { from: from.into(), why: e.to_string() })
}

fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], from: &str, rank: Option<usize>, deadline: Instant) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BootstrapError::Timeout { after: Duration::ZERO, waiting_for: from.into(), rejected: 0 });
        }
        stream.set_read_timeout(Some(left)).map_err(io("set read timeout"))?;
        match stream.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(match rank {
                    Some(rank) => BootstrapError::PeerClosed { rank },
                    None => BootstrapError::Malformed { from: from.into(), why: "the connection closed mid-frame".into() },
                })
            }
            Ok(n) => done += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(e) => return Err(closed_or_io(e, rank, "receive")),
        }
    }
    Ok(())
}

/// A rank's connections after the rendezvous: rank 0 holds one per other
/// rank (index r - 1), every other rank one to rank 0.
#[derive(Debug)]
pub struct Bootstrap {
    rank: usize,
    world: usize,
    links: Vec<TcpStream>,
    round: u64,
}

impl Bootstrap {
    /// Rank 0's side of the rendezvous: accepts the other `world - 1` ranks
    /// on `listener` until `timeout` has passed, checks each (secret, then
    /// protocol, world, rank, identity), and sends every rank the table of
    /// payloads, which it also returns (rank order).
    pub fn root(listener: Listener, world: usize, identity: &Identity, payload: &[u8], timeout: Duration) -> Result<(Self, Vec<Vec<u8>>)> {
        check_world(0, world)?;
        let start = Instant::now();
        let deadline = deadline_after(timeout);
        listener.socket.set_nonblocking(true).map_err(io("listen"))?;
        let mut joined: Vec<Option<(TcpStream, Vec<u8>)>> = (1..world).map(|_| None).collect();
        let mut rejected = 0;
        // Each new connection says hello on a thread of its own, within
        // HELLO_TIME, so silent or slow connections cannot delay the others;
        // at most MAX_PENDING at once (more are closed at once).
        let (hellos, heard) = std::sync::mpsc::channel::<(TcpStream, Result<Message>)>();
        let mut pending = 0usize;
        while joined.iter().any(Option::is_none) {
            match listener.socket.accept() {
                Ok((stream, _)) if pending >= MAX_PENDING => {
                    drop(stream);
                    rejected += 1;
                }
                Ok((mut stream, peer)) => {
                    pending += 1;
                    let hellos = hellos.clone();
                    let hello_deadline = deadline.min(Instant::now() + HELLO_TIME);
                    std::thread::spawn(move || {
                        let prepared = stream.set_nonblocking(false).and_then(|_| stream.set_nodelay(true)).map_err(io("accept"));
                        let hello = prepared.and_then(|_| receive(&mut stream, &format!("connection from {peer}"), None, hello_deadline));
                        let _ = hellos.send((stream, hello));
                    });
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(abort_all(&mut joined, BootstrapError::Io { what: "accept", source: e })),
            }
            while let Ok((mut stream, hello)) = heard.try_recv() {
                pending -= 1;
                let (rank, protocol, their_world, their_identity, their_payload) = match hello {
                    Ok(Message::Hello { magic, protocol, secret, rank, world, identity, payload })
                        if magic == MAGIC && bool::from(secret.ct_eq(&listener.id.secret)) =>
                    {
                        (rank as usize, protocol, world as usize, identity, payload)
                    }
                    // No secret, not a hello, a bad frame or silence: not one of ours.
                    _ => {
                        rejected += 1;
                        continue;
                    }
                };
                let problem = if protocol != PROTOCOL {
                    Some((rank, format!("bootstrap protocol {protocol} against {PROTOCOL}")))
                } else if their_world != world {
                    Some((rank, format!("world size {their_world} against {world}")))
                } else if !(1..world).contains(&rank) {
                    Some((rank, format!("rank {rank} is outside 1..{world}")))
                } else if joined[rank - 1].is_some() {
                    Some((rank, format!("rank {rank} joined twice")))
                } else {
                    identity.difference(&their_identity).map(|what| (rank, what))
                };
                if let Some((rank, what)) = problem {
                    let error = BootstrapError::Mismatch { rank, what };
                    let _ = send(&mut stream, &Message::Abort { rank: 0, why: error.to_string() }, soon());
                    return Err(abort_all(&mut joined, error));
                }
                joined[rank - 1] = Some((stream, their_payload));
            }
            if joined.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = (1..world).filter(|&r| joined[r - 1].is_none()).map(|r| r.to_string()).collect();
                let waiting_for = format!("rank(s) {} to connect", missing.join(", "));
                return Err(abort_all(&mut joined, BootstrapError::Timeout { after: start.elapsed(), waiting_for, rejected }));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut links = Vec::with_capacity(world - 1);
        let mut payloads = vec![payload.to_vec()];
        for (stream, payload) in joined.into_iter().flatten() {
            links.push(stream);
            payloads.push(payload);
        }
        let mut boot = Self { rank: 0, world, links, round: 0 };
        for r in 1..world {
            let table = Message::Table { payloads: payloads.clone() };
            if let Err(e) = send(&mut boot.links[r - 1], &table, deadline).map_err(|e| timed_out(peer_of(e, r), &format!("rank {r} to read the table"))) {
                boot.abort(&e.to_string());
                return Err(e);
            }
        }
        Ok((boot, payloads))
    }

    /// A rank other than 0: connects to `id` (retrying until rank 0
    /// listens), presents the secret, its rank, the world size, its
    /// identity and payload, and waits for the table of every rank's
    /// payload, all before `timeout` has passed.
    pub fn join(id: &UniqueId, rank: usize, world: usize, identity: &Identity, payload: &[u8], timeout: Duration) -> Result<(Self, Vec<Vec<u8>>)> {
        check_world(rank, world)?;
        if rank == 0 {
            return Err(BootstrapError::Invalid("rank 0 is the root: use Bootstrap::root".into()));
        }
        let start = Instant::now();
        let deadline = deadline_after(timeout);
        let mut stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&id.addr, left.max(Duration::from_millis(1))) {
                Ok(s) => break s,
                Err(_) if Instant::now() + Duration::from_millis(20) < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return Err(BootstrapError::Timeout { after: start.elapsed(), waiting_for: format!("rank 0 to listen at {}", id.addr), rejected: 0 }),
            }
        };
        stream.set_nodelay(true).map_err(io("connect"))?;
        let hello = Message::Hello {
            magic: MAGIC,
            protocol: PROTOCOL,
            secret: id.secret,
            rank: rank as u32,
            world: world as u32,
            identity: identity.clone(),
            payload: payload.to_vec(),
        };
        send(&mut stream, &hello, deadline).map_err(|e| peer_of(e, 0))?;
        let waiting = |e| match e {
            BootstrapError::Timeout { rejected, .. } => {
                BootstrapError::Timeout { after: start.elapsed(), waiting_for: "rank 0's table (every rank to join)".into(), rejected }
            }
            other => other,
        };
        match receive(&mut stream, "rank 0", Some(0), deadline).map_err(waiting)? {
            Message::Table { payloads } if payloads.len() == world && payloads[rank] == payload => {
                Ok((Self { rank, world, links: vec![stream], round: 0 }, payloads))
            }
            Message::Abort { rank: who, why } => Err(BootstrapError::Aborted { rank: who as usize, why }),
            other => Err(BootstrapError::Malformed { from: "rank 0".into(), why: format!("expected the table of {world} payloads, got {}", kind(&other)) }),
        }
    }

    /// The rendezvous of a process that a launcher started with
    /// [`env::RANK`], [`env::WORLD_SIZE`] and [`env::UNIQUE_ID`] (one id,
    /// made by [`UniqueId::generate`], for every rank): rank 0 listens at
    /// the id's address ([`Bootstrap::root`]), the others join it
    /// ([`Bootstrap::join`]). A variable that is missing or does not parse
    /// is [`BootstrapError::Invalid`] naming it.
    pub fn from_env(identity: &Identity, payload: &[u8], timeout: Duration) -> Result<(Self, Vec<Vec<u8>>)> {
        let var = |name: &str| std::env::var(name).map_err(|_| BootstrapError::Invalid(format!("{name} is not set (or not UTF-8)")));
        let number = |name: &str| var(name)?.trim().parse::<usize>().map_err(|_| BootstrapError::Invalid(format!("{name} is not a number")));
        let (rank, world, id) = (number(env::RANK)?, number(env::WORLD_SIZE)?, var(env::UNIQUE_ID)?.trim().parse::<UniqueId>()?);
        check_world(rank, world)?;
        if rank == 0 {
            Self::root(Listener::for_id(&id)?, world, identity, payload, timeout)
        } else {
            Self::join(&id, rank, world, identity, payload, timeout)
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Every rank's `data`, in rank order, on every rank (through rank 0),
    /// before `timeout` has passed. A rank that closed its connection, sent
    /// a bad frame or did not answer ends it for every rank with an error
    /// naming it.
    pub fn all_gather(&mut self, data: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>> {
        let deadline = deadline_after(timeout);
        self.round += 1;
        let round = self.round;
        let result = if self.rank == 0 { self.gather_at_root(data, round, deadline) } else { self.gather_at_leaf(data, round, deadline) };
        if let Err(e) = &result {
            // Rank 0 tells every rank (a leaf's abort too: the others wait
            // for rank 0); a leaf tells rank 0 unless rank 0 told it.
            if self.rank == 0 || !matches!(e, BootstrapError::Aborted { .. }) {
                self.abort(&e.to_string());
            }
        }
        result
    }

    /// Waits until every rank has reached this point (an `all_gather` of nothing).
    pub fn barrier(&mut self, timeout: Duration) -> Result<()> {
        self.all_gather(&[], timeout).map(|_| ())
    }

    /// Tells every connected rank that this one ends the bootstrap
    /// (best effort: a peer that is gone is not waited for).
    pub fn abort(&mut self, why: &str) {
        for link in &mut self.links {
            let _ = send(link, &Message::Abort { rank: self.rank as u32, why: why.into() }, soon());
        }
    }

    /// A second handle on each connection, with the rank at its other end,
    /// for a thread that watches for peers that end (`peer_ended`) while
    /// this one keeps using the connections.
    pub fn watch_handles(&self) -> Result<Vec<(usize, TcpStream)>> {
        let peer = |i: usize| if self.rank == 0 { i + 1 } else { 0 };
        self.links.iter().enumerate().map(|(i, l)| Ok((peer(i), l.try_clone().map_err(io("clone a connection"))?))).collect()
    }

    /// Closes every connection (the peers see it end; a thread blocked on
    /// one of them returns).
    pub fn shutdown(&self) {
        for link in &self.links {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
    }

    fn gather_at_root(&mut self, data: &[u8], round: u64, deadline: Instant) -> Result<Vec<Vec<u8>>> {
        let mut parts = vec![data.to_vec()];
        for r in 1..self.world {
            let from = format!("rank {r}");
            match receive(&mut self.links[r - 1], &from, Some(r), deadline).map_err(|e| timed_out(e, &from))? {
                Message::Gather { round: got, data } if got == round => parts.push(data),
                Message::Abort { rank, why } => return Err(BootstrapError::Aborted { rank: rank as usize, why }),
                other => return Err(BootstrapError::Malformed { from, why: format!("expected all_gather round {round}, got {}", kind(&other)) }),
            }
        }
        for (i, link) in self.links.iter_mut().enumerate() {
            send(link, &Message::Scatter { round, parts: parts.clone() }, deadline).map_err(|e| timed_out(peer_of(e, i + 1), &format!("rank {} to read", i + 1)))?;
        }
        Ok(parts)
    }

    fn gather_at_leaf(&mut self, data: &[u8], round: u64, deadline: Instant) -> Result<Vec<Vec<u8>>> {
        let root = &mut self.links[0];
        send(root, &Message::Gather { round, data: data.to_vec() }, deadline).map_err(|e| peer_of(e, 0))?;
        match receive(root, "rank 0", Some(0), deadline).map_err(|e| timed_out(e, "rank 0 (and the ranks it waits for)"))? {
            Message::Scatter { round: got, parts } if got == round && parts.len() == self.world && parts[self.rank] == data => Ok(parts),
            Message::Abort { rank, why } => Err(BootstrapError::Aborted { rank: rank as usize, why }),
            other => Err(BootstrapError::Malformed { from: "rank 0".into(), why: format!("expected all_gather round {round}, got {}", kind(&other)) }),
        }
    }
}

/// Whether the peer at the other end of `link` has ended: it closed its
/// side (its process ended, or dropped the bootstrap) or the connection was
/// reset, even while frames it sent earlier are still unread here. Never
/// blocks and reads nothing (those frames stay for the next `receive`).
/// `poll` rather than a peek at the data: a peek sees the first unread
/// byte, not the end behind it.
pub fn peer_ended(link: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd { fd: link.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd of a descriptor `link` owns; timeout 0
    // (does not block).
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// How long a new connection has to send its hello.
const HELLO_TIME: Duration = Duration::from_secs(2);
/// Connections saying hello at once; more are closed on arrival.
const MAX_PENDING: usize = 64;

/// `timeout` from now; a timeout too long for the clock waits a year.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or(now + Duration::from_secs(365 * 86_400))
}

/// The deadline of a best-effort abort message.
fn soon() -> Instant {
    Instant::now() + Duration::from_millis(500)
}

fn check_world(rank: usize, world: usize) -> Result<()> {
    if !(2..=crate::device::abi::MAX_WORLD).contains(&world) || rank >= world {
        return Err(BootstrapError::Invalid(format!("rank {rank} of world {world} (world must be 2..={})", crate::device::abi::MAX_WORLD)));
    }
    Ok(())
}

/// A send error on the link to `rank`, as `PeerClosed` when it closed.
fn peer_of(e: BootstrapError, rank: usize) -> BootstrapError {
    match e {
        BootstrapError::Io { what, source } => closed_or_io(source, Some(rank), what),
        other => other,
    }
}

fn timed_out(e: BootstrapError, waiting_for: &str) -> BootstrapError {
    match e {
        BootstrapError::Timeout { after, rejected, .. } => BootstrapError::Timeout { after, waiting_for: waiting_for.into(), rejected },
        other => other,
    }
}

/// Sends an abort to every rank that joined, then returns `error`.
fn abort_all(joined: &mut [Option<(TcpStream, Vec<u8>)>], error: BootstrapError) -> BootstrapError {
    for (stream, _) in joined.iter_mut().flatten() {
        let _ = send(stream, &Message::Abort { rank: 0, why: error.to_string() }, soon());
    }
    error
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "a hello",
        Message::Table { .. } => "a table",
        Message::Gather { .. } => "a gather",
        Message::Scatter { .. } => "a scatter",
        Message::Abort { .. } => "an abort",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_text_round_trips_and_rejects_garbage() {
        let listener = Listener::loopback().unwrap();
        let id = listener.id().clone();
        let text = id.to_string();
        assert_eq!(text.parse::<UniqueId>().unwrap(), id);
        assert!(id.addr().ip().is_loopback());
        assert!(!format!("{id:?}").contains(&text[text.len() - 64..]), "Debug shows the secret");
        // 64 bytes that are not 64 hex digits: a multi-byte character (no
        // panic on slicing), a sign that from_str_radix would accept.
        let prefix = &text[..text.len() - 64];
        let accented = format!("{prefix}{}é{}", "0".repeat(30), "0".repeat(32));
        let signed = format!("{prefix}+f{}", "0".repeat(62));
        for bad in ["", "flashcomm1", "flashcomm2/127.0.0.1:1/00", "flashcomm1/nowhere/00", &text[..text.len() - 1], &format!("{text}/x"), &text.replace(&text[text.len() - 2..], "zz"), &accented, &signed] {
            assert!(matches!(bad.parse::<UniqueId>(), Err(BootstrapError::BadId(_))), "{bad:?} parsed");
        }
        // Two ids never share a secret.
        assert_ne!(Listener::loopback().unwrap().id().secret, id.secret);
    }

    fn identity() -> Identity {
        Identity { library: "test".into(), kernels: 7, config: "c".into(), host: "h".into() }
    }

    const T: Duration = Duration::from_secs(5);

    /// Ranks 1..world join from threads with `payload(r)`; returns the root's
    /// result and each joiner's.
    fn meet(
        listener: Listener,
        world: usize,
        joiner: impl Fn(&UniqueId, usize) -> Result<(Bootstrap, Vec<Vec<u8>>)> + Sync,
    ) -> (Result<(Bootstrap, Vec<Vec<u8>>)>, Vec<Result<(Bootstrap, Vec<Vec<u8>>)>>) {
        let id = listener.id().clone();
        std::thread::scope(|s| {
            let joiners: Vec<_> = (1..world).map(|r| s.spawn({ let (id, joiner) = (&id, &joiner); move || joiner(id, r) })).collect();
            let root = Bootstrap::root(listener, world, &identity(), b"rank 0", T);
            (root, joiners.into_iter().map(|h| h.join().unwrap()).collect())
        })
    }

    fn payload(r: usize) -> Vec<u8> {
        format!("rank {r}").into_bytes()
    }

    #[test]
    fn ranks_meet_and_gather() {
        let world = 4;
        let (root, joined) = meet(Listener::loopback().unwrap(), world, |id, r| Bootstrap::join(id, r, world, &identity(), &payload(r), T));
        let (root, table) = root.unwrap();
        let expected: Vec<Vec<u8>> = (0..world).map(payload).collect();
        assert_eq!(table, expected);
        let mut all = vec![root];
        for j in joined {
            let (b, t) = j.unwrap();
            assert_eq!(t, expected);
            all.push(b);
        }
        // Two rounds of all_gather with different sizes, then a barrier.
        for round in 0..2usize {
            let results: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
                let hs: Vec<_> = all.iter_mut().map(|b| s.spawn(move || {
                    let data = vec![b.rank() as u8; 10 * round + b.rank()];
                    b.all_gather(&data, T).unwrap()
                })).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let want: Vec<Vec<u8>> = (0..world).map(|r| vec![r as u8; 10 * round + r]).collect();
            assert!(results.iter().all(|r| *r == want));
        }
        std::thread::scope(|s| all.iter_mut().for_each(|b| { s.spawn(move || b.barrier(T).unwrap()); }));
    }

    /// Connections without the secret, with a bad frame, or silent are
    /// closed; the real ranks still meet.
    #[test]
    fn strangers_cannot_take_a_rank() {
        let listener = Listener::loopback().unwrap();
        let addr = listener.id().addr();
        let mut wrong = listener.id().clone();
        wrong.secret[0] ^= 1;
        let strangers = move || {
            let mut garbage = TcpStream::connect(addr).unwrap();
            garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let mut huge = TcpStream::connect(addr).unwrap();
            huge.write_all(&u32::MAX.to_le_bytes()).unwrap();
            let _silent = TcpStream::connect(addr).unwrap();
            // The wrong secret claims rank 1 first.
            let _ = Bootstrap::join(&wrong, 1, 2, &identity(), b"impostor", Duration::from_millis(300));
            std::thread::sleep(Duration::from_millis(100));
        };
        let (root, joined) = meet(listener, 2, |id, r| {
            strangers();
            Bootstrap::join(id, r, 2, &identity(), &payload(r), T)
        });
        assert_eq!(root.unwrap().1, vec![payload(0), payload(1)]);
        assert_eq!(joined[0].as_ref().unwrap().1[1], payload(1));
    }

    /// With only strangers, the root times out and says how many it closed.
    #[test]
    fn a_missing_rank_is_a_timeout_naming_it() {
        let listener = Listener::loopback().unwrap();
        let mut wrong = listener.id().clone();
        wrong.secret[31] ^= 0x80;
        let id = listener.id().clone();
        let start = Instant::now();
        let (root, joined) = std::thread::scope(|s| {
            let stranger = s.spawn(|| Bootstrap::join(&wrong, 1, 3, &identity(), b"x", Duration::from_millis(500)));
            let one = s.spawn(|| Bootstrap::join(&id, 1, 3, &identity(), b"one", Duration::from_secs(10)));
            let root = Bootstrap::root(listener, 3, &identity(), b"zero", Duration::from_secs(1));
            let _ = stranger.join();
            (root, one.join().unwrap())
        });
        let elapsed = start.elapsed();
        match root {
            Err(BootstrapError::Timeout { waiting_for, rejected, .. }) => {
                assert!(waiting_for.contains('2') && !waiting_for.contains('1'), "{waiting_for}");
                assert_eq!(rejected, 1);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // Rank 1 hears of it from rank 0 at once, not at its own deadline.
        assert!(matches!(joined, Err(BootstrapError::Aborted { rank: 0, .. })), "{joined:?}");
        assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    }

    #[test]
    fn disagreements_end_the_rendezvous_with_the_rank_named() {
        let cases: [(&str, fn(usize) -> (usize, Identity)); 4] = [
            ("world size 3 against 2", |_| (3, identity())),
            ("flashcomm other against test", |_| (2, Identity { library: "other".into(), ..identity() })),
            ("kernel image", |_| (2, Identity { kernels: 8, ..identity() })),
            ("host", |_| (2, Identity { host: "elsewhere".into(), ..identity() })),
        ];
        for (what, theirs) in cases {
            let (root, joined) = meet(Listener::loopback().unwrap(), 2, |id, r| {
                let (world, identity) = theirs(r);
                Bootstrap::join(id, r, world, &identity, b"p", T)
            });
            match root {
                Err(BootstrapError::Mismatch { rank: 1, what: got }) => assert!(got.contains(what), "{what}: {got}"),
                other => panic!("{what}: expected a mismatch of rank 1, got {other:?}"),
            }
            assert!(matches!(joined[0], Err(BootstrapError::Aborted { rank: 0, .. })), "{what}: {:?}", joined[0]);
        }
        // Two ranks claiming rank 1.
        let (root, _) = meet(Listener::loopback().unwrap(), 3, |id, _| Bootstrap::join(id, 1, 3, &identity(), b"p", T));
        assert!(matches!(root, Err(BootstrapError::Mismatch { rank: 1, ref what }) if what.contains("twice")), "{root:?}");
    }

    /// A launcher's id (fixed port, made before any rank): rank 0 listens
    /// at it with its secret, a stranger's secret is not accepted, and a
    /// port-0 id is refused.
    #[test]
    fn an_id_made_ahead_works_and_keeps_its_secret() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let id = UniqueId::generate(free).unwrap();
        let (root, joined) = meet(Listener::for_id(&id).unwrap(), 2, |id, r| Bootstrap::join(id, r, 2, &identity(), b"p", T));
        assert!(root.is_ok() && joined.iter().all(Result::is_ok), "{root:?}");
        assert_ne!(UniqueId::generate(free).unwrap().secret, id.secret);
        assert!(matches!(UniqueId::generate("127.0.0.1:0".parse().unwrap()), Err(BootstrapError::Invalid(_))));
    }

    /// `peer_ended` sees a peer's end even behind a frame it sent that is
    /// still unread, reads nothing, and says nothing of a live peer.
    #[test]
    fn a_peer_that_ended_is_seen_behind_unread_frames() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = server.accept().unwrap();
        assert!(!peer_ended(&accepted), "a silent live peer");
        client.write_all(b"frame").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peer_ended(&accepted), "a live peer with a frame pending");
        drop(client);
        std::thread::sleep(Duration::from_millis(50));
        assert!(peer_ended(&accepted), "a closed peer behind an unread frame");
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"frame", "the frame was consumed");
    }

    /// After the rendezvous, a peer's oversized or undecodable frame, or a
    /// closed connection, is a typed error naming it, and the other ranks
    /// hear of it.
    #[test]
    fn bad_frames_and_closed_peers_are_errors() {
        for bad in [Some(u32::MAX.to_le_bytes().to_vec()), Some([3u8, 0, 0, 0, 0xff, 0xff, 0xff].to_vec()), None] {
            let (root, joined) = meet(Listener::loopback().unwrap(), 3, |id, r| Bootstrap::join(id, r, 3, &identity(), &payload(r), T));
            let (mut root, _) = root.unwrap();
            let mut joined: Vec<Bootstrap> = joined.into_iter().map(|j| j.unwrap().0).collect();
            let mut two = joined.pop().unwrap();
            let mut one = joined.pop().unwrap();
            match &bad {
                Some(bytes) => two.links[0].write_all(bytes).unwrap(),
                None => drop(two),
            }
            let (r0, r1) = std::thread::scope(|s| {
                let h = s.spawn(|| one.all_gather(b"1", T));
                (root.all_gather(b"0", T), h.join().unwrap())
            });
            match (&bad, &r0) {
                (Some(b), Err(BootstrapError::FrameTooLarge { from, .. })) if b.len() == 4 => assert_eq!(from, "rank 2"),
                (Some(b), Err(BootstrapError::Malformed { from, .. })) if b.len() != 4 => assert_eq!(from, "rank 2"),
                (None, Err(BootstrapError::PeerClosed { rank: 2 })) => {}
                _ => panic!("{bad:?}: root got {r0:?}"),
            }
            assert!(matches!(r1, Err(BootstrapError::Aborted { rank: 0, .. })), "{bad:?}: rank 1 got {r1:?}");
        }
    }

    /// Silent connections each get their hello time in parallel: many of
    /// them delay the real rank by nothing like their sum.
    #[test]
    fn silent_connections_do_not_queue_up() {
        let listener = Listener::loopback().unwrap();
        let addr = listener.id().addr();
        let start = Instant::now();
        let (root, joined) = meet(listener, 2, |id, r| {
            let silent: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let joined = Bootstrap::join(id, r, 2, &identity(), &payload(r), T);
            drop(silent);
            joined
        });
        assert!(root.is_ok() && joined[0].is_ok());
        // One hello time at most (2 s), not ten.
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    }

    /// A rank that aborts: rank 0 relays it, so the other ranks stop at
    /// once instead of at their deadline; deadlines of any length are fine.
    #[test]
    fn an_abort_reaches_every_rank() {
        let (root, joined) = meet(Listener::loopback().unwrap(), 3, |id, r| Bootstrap::join(id, r, 3, &identity(), &payload(r), T));
        let (mut root, _) = root.unwrap();
        let mut joined: Vec<Bootstrap> = joined.into_iter().map(|j| j.unwrap().0).collect();
        let mut two = joined.pop().unwrap();
        let mut one = joined.pop().unwrap();
        let start = Instant::now();
        let (r0, r2) = std::thread::scope(|s| {
            let h = s.spawn(|| two.all_gather(b"2", Duration::MAX));
            one.abort("rank 1 gives up");
            (root.all_gather(b"0", Duration::MAX), h.join().unwrap())
        });
        assert!(matches!(r0, Err(BootstrapError::Aborted { rank: 1, ref why }) if why == "rank 1 gives up"), "{r0:?}");
        assert!(matches!(r2, Err(BootstrapError::Aborted { rank: 0, ref why }) if why.contains("rank 1 gives up")), "{r2:?}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
