//! A TCP proxy on loopback that adds a fixed round-trip delay between its clients and one
//! upstream server, for `scripts/bench.sh` with `BENCH_DELAY_MS` (this kernel has no netem).
//!
//! Invariants: every byte is delivered in order and unchanged, each direction exactly
//! `rtt / 2` after the proxy read it, and the delay never limits throughput: a reader task
//! stamps each chunk with its due time and queues it, a writer task sends chunks when due, so
//! many chunks are in flight at once (a pipe, not a stop-and-wait). The queue is bounded
//! (`QUEUE_CHUNKS` chunks of at most `CHUNK` bytes), so a slow receiver slows the sender through
//! TCP's own flow control instead of growing memory. A half-close is forwarded after the same
//! delay. Only 127.0.0.1 is accepted for both the listening and the upstream address.
//!
//! `cargo run --release --example delayproxy -- --listen 127.0.0.1:0 --upstream 127.0.0.1:3900 --rtt-ms 20`
//! prints `listening 127.0.0.1:PORT` once it accepts connections.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK: usize = 256 * 1024;
/// Chunks queued per direction: up to 64 MiB in flight, far above what 10 ms at loopback
/// speed needs, so the delay does not cap throughput.
const QUEUE_CHUNKS: usize = 256;

#[derive(Parser)]
#[command(about = "Loopback TCP proxy adding a round-trip delay (for scripts/bench.sh)")]
struct Args {
    /// Address to listen on (127.0.0.1 only; port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Server to forward to (127.0.0.1 only)
    #[arg(long)]
    upstream: SocketAddr,
    /// Round-trip delay added, in milliseconds: each direction gets half
    #[arg(long)]
    rtt_ms: u64,
}

/// One queued chunk: its bytes (empty = end of stream) and when it may be written.
type Due = (Instant, Vec<u8>);

/// Reads `from` until EOF or an error, queueing each chunk with its due time.
async fn read_side(mut from: OwnedReadHalf, queue: mpsc::Sender<Due>, delay: Duration) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        // a copy of just what was read: small reads stay small in the queue
        if queue
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .await
            .is_err()
            || n == 0
        {
            return;
        }
    }
}

/// Writes each queued chunk to `to` once it is due; shuts `to`'s write side down at the end.
async fn write_side(mut to: OwnedWriteHalf, mut queue: mpsc::Receiver<Due>) {
    while let Some((due, buf)) = queue.recv().await {
        tokio::time::sleep_until(due).await;
        if buf.is_empty() {
            break;
        }
        if to.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

async fn serve(client: TcpStream, upstream: SocketAddr, delay: Duration) -> Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connect {upstream}"))?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE_CHUNKS);
    let (down_tx, down_rx) = mpsc::channel(QUEUE_CHUNKS);
    tokio::join!(
        read_side(client_r, up_tx, delay),
        write_side(server_w, up_rx),
        read_side(server_r, down_tx, delay),
        write_side(client_w, down_rx),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for a in [args.listen, args.upstream] {
        if a.ip() != std::net::Ipv4Addr::LOCALHOST {
            bail!("{a}: only 127.0.0.1 is allowed");
        }
    }
    let delay = Duration::from_micros(args.rtt_ms * 1000 / 2);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await.context("accept")?;
        tokio::spawn(async move {
            if let Err(e) = serve(client, args.upstream, delay).await {
                eprintln!("delayproxy: {e:#}");
            }
        });
    }
}
