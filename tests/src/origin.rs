//! A tiny HTTP/1.1 origin server for the network tests, standing in for the
//! internet: it answers every request with `200` and a body naming what it saw, and
//! remembers each request line and `Host` header.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the server waits for a request head on one connection.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on `0.0.0.0:<free port>`, so that every address of the host reaches it.
/// It stops accepting when dropped.
#[derive(Debug)]
pub struct Origin {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<Mutex<bool>>,
}

impl Origin {
    /// Starts the server on a thread of its own (one more per connection).
    ///
    /// `GET /big/N` answers N bytes of `x`; any other request answers
    /// `origin saw <request line> host <Host header>`.
    pub fn start() -> Origin {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the origin");
        let port = listener.local_addr().expect("the origin's address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Mutex::new(false));
        let (seen_by_thread, stop_by_thread) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if *stop_by_thread.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let seen = Arc::clone(&seen_by_thread);
                std::thread::spawn(move || answer(stream, &seen));
            }
        });
        Origin { port, seen, stop }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request so far, as `<request line> host <Host header>`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)));
    }
}

fn answer(mut stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        match reader.read_line(&mut head) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
    let line = head.lines().next().unwrap_or_default().to_owned();
    let host = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("host")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    let what = format!("{line} host {host}");
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(what.clone());
    let size = line
        .split(' ')
        .nth(1)
        .and_then(|path| path.strip_prefix("/big/"))
        .and_then(|n| n.parse::<usize>().ok());
    let body = match size {
        Some(n) => "x".repeat(n),
        None => format!("origin saw {what}"),
    };
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}
