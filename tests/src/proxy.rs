//! A fault-injecting TCP proxy on loopback: one listener standing between a dialer
//! and one upstream address, whose behaviour the test switches at runtime.
//!
//! Owns: accepting connections, dialing the upstream for each, and copying bytes both
//! ways under the current [`Link`]: forwarded, stalled (a cut), or delayed. It must
//! never drop or reorder bytes inside a connection it keeps open, because TCP never
//! does: a cut holds bytes back (as a network partition holds back retransmissions)
//! and delivers them if the link heals while the connection lives; losing a
//! connection's bytes is modelled by [`Proxy::reset`], which closes it.
//!
//! Directions are named from the dialer: [`Direction::Forward`] carries what the
//! dialer sends (requests), [`Direction::Backward`] what the upstream answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// Chunks read from one side and not yet written to the other, per direction.
const QUEUE_CHUNKS: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Dialer → upstream.
    Forward,
    /// Upstream → dialer.
    Backward,
}

/// What a link does to traffic. The default passes everything at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Hold back everything the dialer sends.
    pub block_forward: bool,
    /// Hold back everything the upstream answers.
    pub block_backward: bool,
    /// Added to every chunk, each way.
    pub delay: Duration,
}

impl Link {
    pub const PASS: Link = Link {
        block_forward: false,
        block_backward: false,
        delay: Duration::ZERO,
    };
    pub const CUT: Link = Link {
        block_forward: true,
        block_backward: true,
        delay: Duration::ZERO,
    };

    /// Only `dir` is blocked.
    pub fn one_way(dir: Direction) -> Link {
        Link {
            block_forward: dir == Direction::Forward,
            block_backward: dir == Direction::Backward,
            delay: Duration::ZERO,
        }
    }

    /// Everything passes, `delay` late.
    pub fn delayed(delay: Duration) -> Link {
        Link {
            delay,
            ..Link::PASS
        }
    }

    fn blocks(&self, dir: Direction) -> bool {
        match dir {
            Direction::Forward => self.block_forward,
            Direction::Backward => self.block_backward,
        }
    }
}

struct Shared {
    link: watch::Sender<Link>,
    connections: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
    forward_bytes: AtomicU64,
    backward_bytes: AtomicU64,
}

impl Shared {
    fn counter(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Forward => &self.forward_bytes,
            Direction::Backward => &self.backward_bytes,
        }
    }
}

/// A running proxy. Dropping it stops the listener and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    upstream: String,
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("link", &self.link())
            .finish()
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`,
    /// dialed anew for every connection), running its tasks on `runtime`.
    pub fn start(runtime: &Handle, upstream: impl Into<String>) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let upstream = upstream.into();
        let shared = Arc::new(Shared {
            link: watch::Sender::new(Link::PASS),
            connections: Mutex::default(),
            accepted: AtomicU64::new(0),
            forward_bytes: AtomicU64::new(0),
            backward_bytes: AtomicU64::new(0),
        });
        let listener = {
            let (shared, upstream) = (shared.clone(), upstream.clone());
            let runtime = runtime.clone();
            runtime.clone().spawn(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                while let Ok((inbound, _)) = listener.accept().await {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let task = runtime.spawn(relay(inbound, upstream.clone(), shared.clone()));
                    let mut open = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
                    open.retain(|c| !c.is_finished());
                    open.push(task.abort_handle());
                }
            })
        };
        Ok(Self {
            addr,
            upstream,
            shared,
            listener,
        })
    }

    /// Where dialers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn link(&self) -> Link {
        *self.shared.link.borrow()
    }

    /// Switches the link; connections already open follow at once.
    pub fn set(&self, link: Link) {
        self.shared.link.send_replace(link);
    }

    /// Everything passes again; held-back bytes of open connections are delivered.
    pub fn heal(&self) {
        self.set(Link::PASS);
    }

    /// A network partition: nothing passes, and open connections are closed, so the
    /// dialer's reconnects meet the cut too.
    pub fn cut(&self) {
        self.set(Link::CUT);
        self.reset();
    }

    /// Closes every open connection (each side sees it end); the link is unchanged.
    pub fn reset(&self) {
        let open = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for c in open {
            c.abort();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes delivered so far in `dir`.
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.shared.counter(dir).load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.reset();
    }
}

/// One proxied connection: both directions until either side ends or fails. Held in
/// one task so that aborting it closes both sockets.
async fn relay(inbound: TcpStream, upstream: String, shared: Arc<Shared>) {
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = pump(in_read, out_write, Direction::Forward, &shared) => {}
        _ = pump(out_read, in_write, Direction::Backward, &shared) => {}
    }
}

/// Copies one direction under the link's rules: a chunk waits out the delay it was
/// read under, and nothing is read or written while the direction is blocked.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    dir: Direction,
    shared: &Shared,
) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let mut link = shared.link.subscribe();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            if link.wait_for(|l| !l.blocks(dir)).await.is_err() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + link.borrow().delay;
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async {
        let mut link = shared.link.subscribe();
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if link.wait_for(|l| !l.blocks(dir)).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            shared
                .counter(dir)
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    // The writer drains what the reader queued before its side ended.
    tokio::join!(reader, writer);
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that answers every chunk it receives with the same bytes, and
    /// counts what it received.
    async fn echo_server() -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        (addr, received)
    }

    async fn read_exact_within(s: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(within, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    async fn proxied_echo() -> (Proxy, TcpStream, Arc<AtomicU64>) {
        let (upstream, received) = echo_server().await;
        let proxy = Proxy::start(&Handle::current(), upstream).expect("proxy");
        let client = TcpStream::connect(proxy.addr()).await.expect("connect");
        (proxy, client, received)
    }

    #[tokio::test]
    async fn a_passing_link_copies_both_ways_and_counts_bytes() {
        let (proxy, mut client, _) = proxied_echo().await;
        client.write_all(b"hello").await.expect("write");
        let echoed = read_exact_within(&mut client, 5, Duration::from_secs(5)).await;
        assert_eq!(echoed.as_deref(), Some(&b"hello"[..]));
        assert_eq!(proxy.bytes(Direction::Forward), 5);
        assert_eq!(proxy.bytes(Direction::Backward), 5);
        assert_eq!(proxy.accepted(), 1);
    }

    #[tokio::test]
    async fn a_blocked_link_holds_bytes_back_and_delivers_them_when_healed() {
        let (proxy, mut client, received) = proxied_echo().await;
        proxy.set(Link::CUT);
        client.write_all(b"held").await.expect("write");
        assert_eq!(
            read_exact_within(&mut client, 4, Duration::from_millis(300)).await,
            None,
            "nothing crosses a cut link"
        );
        assert_eq!(received.load(Ordering::Relaxed), 0);
        proxy.heal();
        let echoed = read_exact_within(&mut client, 4, Duration::from_secs(5)).await;
        assert_eq!(echoed.as_deref(), Some(&b"held"[..]));
    }

    #[tokio::test]
    async fn a_one_way_block_lets_requests_through_but_holds_answers() {
        let (proxy, mut client, received) = proxied_echo().await;
        proxy.set(Link::one_way(Direction::Backward));
        client.write_all(b"ping").await.expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) < 4 {
            assert!(Instant::now() < deadline, "the request never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            read_exact_within(&mut client, 4, Duration::from_millis(300)).await,
            None,
            "the answer is held back"
        );
        proxy.heal();
        let echoed = read_exact_within(&mut client, 4, Duration::from_secs(5)).await;
        assert_eq!(echoed.as_deref(), Some(&b"ping"[..]));

        proxy.set(Link::one_way(Direction::Forward));
        client.write_all(b"pong").await.expect("write");
        assert_eq!(
            read_exact_within(&mut client, 4, Duration::from_millis(300)).await,
            None,
            "the request is held back"
        );
        assert_eq!(received.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_delayed_link_delivers_late_and_in_order() {
        let (proxy, mut client, _) = proxied_echo().await;
        proxy.set(Link::delayed(Duration::from_millis(200)));
        let started = Instant::now();
        client.write_all(b"one").await.expect("write");
        client.write_all(b"two").await.expect("write");
        let echoed = read_exact_within(&mut client, 6, Duration::from_secs(5)).await;
        assert_eq!(echoed.as_deref(), Some(&b"onetwo"[..]));
        // Delayed on the way there and on the way back.
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_new_ones_meet_the_cut() {
        let (proxy, mut client, _) = proxied_echo().await;
        client.write_all(b"x").await.expect("write");
        assert!(
            read_exact_within(&mut client, 1, Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.cut();
        let mut buf = [0u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the open connection ends");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");

        let mut again = TcpStream::connect(proxy.addr()).await.expect("reconnect");
        again.write_all(b"y").await.expect("write");
        assert_eq!(
            read_exact_within(&mut again, 1, Duration::from_millis(300)).await,
            None
        );
        proxy.heal();
        let echoed = read_exact_within(&mut again, 1, Duration::from_secs(5)).await;
        assert_eq!(echoed.as_deref(), Some(&b"y"[..]));
    }
}
