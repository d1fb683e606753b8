//! Reading a value from Firecracker's MMDS (IMDSv2-style session token, then GET).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn request(addr: SocketAddr, req: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.take(64 * 1024).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Fetches `path` (for example `/flick/token`) from the MMDS at `addr`.
pub fn fetch(addr: SocketAddr, path: &str) -> io::Result<String> {
    let (status, token) = request(
        addr,
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    if status != 200 {
        return Err(io::Error::other(format!(
            "MMDS token request answered {status}"
        )));
    }
    let (status, body) = request(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nAccept: plain/text\r\n\
             X-metadata-token: {}\r\nConnection: close\r\n\r\n",
            token.trim()
        ),
    )?;
    if status != 200 {
        return Err(io::Error::other(format!(
            "MMDS GET {path} answered {status}"
        )));
    }
    Ok(body.trim().trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn token_then_get() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                let mut r = io::BufReader::new(s.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push(line);
                }
                let mut s = s;
                if head[0].starts_with("PUT") {
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nsss")
                        .unwrap();
                } else {
                    let ok = head.iter().any(|h| h.trim() == "X-metadata-token: sss");
                    let reply: &[u8] = if ok {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsecret\n"
                    } else {
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
                    };
                    s.write_all(reply).unwrap();
                }
                seen.push(head[0].clone());
            }
            seen
        });
        assert_eq!(fetch(addr, "/flick/token").unwrap(), "secret");
        let seen = server.join().unwrap();
        assert!(seen[1].starts_with("GET /flick/token "));
    }
}
