//! A page in a real browser, driven through its DevTools protocol: Debian's chromium,
//! headless, and a minimal WebSocket client (RFC 6455: the upgrade, masked text frames out,
//! text frames in) written here, so no browser-driving crate enters the build. Enough to load
//! a page once and ask it, as time goes by, what a person would see.

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;

/// A headless chromium showing one page, stopped (and its profile removed) when dropped.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    socket: TcpStream,
    next_id: u64,
}

impl Browser {
    /// Opens `url` in a new headless chromium whose profile lives in `profile`.
    pub fn open(url: &str, profile: &Path) -> Browser {
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (apt-get install chromium)");
        // Its readiness: `DevTools listening on ws://127.0.0.1:PORT/...` on stderr. The rest of
        // its stderr (D-Bus complaints in a container) is drained by a thread.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").parse::<u16>());
                }
            }
        });
        let port = rx
            .recv_timeout(super::PATIENCE)
            .expect("chromium's DevTools never listened")
            .expect("a DevTools port");
        // A new page for `url`: DevTools answers with its debugging socket at once.
        let created = new_page(port, url);
        let target: serde_json::Value = serde_json::from_str(&created).unwrap_or_default();
        let ws = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no page for {url}: {created}"))
            .to_owned();
        let path = ws.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let mut socket = super::connect(([127, 0, 0, 1], port).into());
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Browser {
            child,
            profile: profile.to_owned(),
            socket,
            next_id: 0,
        }
    }

    /// The value of the JavaScript `expression` in the page now.
    pub fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        self.call("Runtime.evaluate", params)["result"]["value"].clone()
    }

    /// The page as a person sees it now, as PNG bytes.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        let data = shot["data"].as_str().expect("a screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    }

    /// One DevTools command, and its result (events that arrive meanwhile are skipped).
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = serde_json::json!({ "id": id, "method": method, "params": params });
        self.send(call.to_string().as_bytes());
        loop {
            let message: serde_json::Value = serde_json::from_slice(&self.receive()).unwrap();
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// One text frame, masked as a client's must be.
    fn send(&mut self, payload: &[u8]) {
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.write_all(&frame).unwrap();
    }

    /// One message (its frames joined), skipping control frames.
    fn receive(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.socket.read_exact(&mut head).unwrap();
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.socket.read_exact(&mut n).unwrap();
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.socket.read_exact(&mut n).unwrap();
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.socket.read_exact(&mut payload).unwrap();
            if head[0] & 0x0f >= 0x8 {
                continue;
            }
            message.extend_from_slice(&payload);
            if head[0] & 0x80 != 0 {
                return message;
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `PUT /json/new?URL` of DevTools on `port`: a new page showing `url`, described in JSON.
/// DevTools answers only a `Host` that is an IP address or `localhost` (against DNS
/// rebinding), and keeps the connection open: the answer is read by its length.
fn new_page(port: u16, url: &str) -> String {
    let mut s = super::connect(([127, 0, 0, 1], port).into());
    write!(
        s,
        "PUT /json/new?{url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    super::read_reply(&mut s).text()
}
