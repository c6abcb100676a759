//! Binding the client-facing listeners.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel queues for `accept`. tokio's `TcpListener::bind` asks for 1024:
/// a burst of thousands of connections (a viral spike, a load test at 5,000) then overflows
/// the queue, the kernel drops the excess SYNs and those clients wait a second for their
/// retransmit. Linux caps the request at `net.core.somaxconn` (4096 by default since 5.4).
pub const BACKLOG: u32 = 65_535;

/// Binds `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind` does).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_an_ephemeral_port_and_accepts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_busy_port_is_an_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(bind(first.local_addr().unwrap()).is_err());
    }
}
