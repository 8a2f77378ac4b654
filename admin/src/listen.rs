//! One `SO_REUSEPORT` listening socket per worker, all on the same address, so the kernel
//! spreads connections across cores.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Binds `n` listeners on `addr`; with port 0 they all share the port the first one got.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let first = bind_one(addr)?;
    let local = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_one(local)?);
    }
    Ok((local, all))
}
