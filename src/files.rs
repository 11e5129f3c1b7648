//! Reading the files an operator names (config, certificates, keys, CA bundles, secrets)
//! without trusting what the path turns out to be.
//!
//! `std::fs::read` reads whatever it is given until it ends. A config path that is a FIFO
//! nobody writes to blocks the reading thread forever (and if that thread is one of the
//! runtime's, every client it serves waits too); a path that is a symlink to `/dev/zero` never
//! ends, and the process grows until the kernel kills it. Both were seen: a reload that
//! stopped all traffic for 10 s, and 3.5 GB in 2 s. So every file any binary reads goes
//! through [`read_capped`]:
//!
//! * the file is opened with `O_NONBLOCK`, so opening a FIFO returns at once instead of
//!   waiting for a writer;
//! * it must be a regular file (a symlink to one is fine): FIFOs, sockets and devices are
//!   refused with a message that says so;
//! * it must be no larger than a cap that no honest file of its kind comes near, checked both
//!   on the size the file system reports and on what is actually read (the file may grow
//!   between the two).
//!
//! Code on the runtime's threads (a reload) calls [`read_capped_async`], which does the same on
//! tokio's blocking pool with a time limit, so even a file system that hangs (a dead NFS mount)
//! stalls only the reload, never the data path.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest config file read: a config of a few MiB is already absurd.
pub const MAX_CONFIG: u64 = 1024 * 1024;
/// The largest PEM file read (certificate chains, keys, CA bundles): the whole Mozilla root
/// store is about 220 KiB.
pub const MAX_PEM: u64 = 1024 * 1024;
/// The largest secret or token file read: these hold a few dozen bytes.
pub const MAX_SECRET: u64 = 64 * 1024;

/// How long a reload waits for one file before giving up on it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a file was not read. Its `Display` is one line that names the file: `cannot read
/// config file x.toml: not a regular file (a FIFO)`.
#[derive(Debug)]
pub struct ReadError {
    pub path: PathBuf,
    pub what: &'static str,
    pub why: Why,
}

#[derive(Debug)]
pub enum Why {
    Io(io::Error),
    NotRegular(&'static str),
    TooLarge {
        cap: u64,
    },
    TimedOut(Duration),
    /// A key file that users other than its owner may read (its permission bits).
    Exposed(u32),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read {} {}: ", self.what, self.path.display())?;
        match &self.why {
            Why::Io(e) => write!(f, "{e}"),
            Why::NotRegular(kind) => write!(f, "not a regular file ({kind})"),
            Why::TooLarge { cap } => write!(f, "larger than the {} limit", human(*cap)),
            Why::TimedOut(limit) => write!(f, "no answer from the file system within {limit:?}"),
            Why::Exposed(mode) => write!(
                f,
                "readable by other users (mode {mode:03o}); a key must be readable by its owner \
                 only: chmod 600 it"
            ),
        }
    }
}

impl std::error::Error for ReadError {}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(&self.why, Why::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1024 * 1024 && b % (1024 * 1024) == 0 => format!("{} MiB", b / (1024 * 1024)),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b}-byte"),
    }
}

/// Reads the regular file at `path` whole, refusing anything else and anything over `cap`
/// bytes. `what` names it in the error ("config file", "certificate file").
pub fn read_capped(path: &Path, what: &'static str, cap: u64) -> Result<Vec<u8>, ReadError> {
    read(path, what, cap, false)
}

/// [`read_capped`] for a key that must stay secret (session-ticket keys, chapter 13): the file
/// must also be unreadable by group and others, as OpenSSH requires of its private keys. A key
/// every local user can read is a key every local user can use to decrypt recorded traffic.
pub fn read_private(path: &Path, what: &'static str, cap: u64) -> Result<Vec<u8>, ReadError> {
    read(path, what, cap, true)
}

fn read(path: &Path, what: &'static str, cap: u64, private: bool) -> Result<Vec<u8>, ReadError> {
    let fail = |why| ReadError {
        path: path.to_owned(),
        what,
        why,
    };
    let file = open_nonblocking(path).map_err(|e| fail(Why::Io(e)))?;
    let meta = file.metadata().map_err(|e| fail(Why::Io(e)))?;
    if !meta.is_file() {
        return Err(fail(Why::NotRegular(kind(&meta))));
    }
    // Checked on the opened file, not the path: the path may be swapped in between.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(Why::Exposed(mode)));
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    if meta.len() > cap {
        return Err(fail(Why::TooLarge { cap }));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(Why::Io(e)))?;
    if bytes.len() as u64 > cap {
        return Err(fail(Why::TooLarge { cap }));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path, what: &'static str, cap: u64) -> Result<String, ReadError> {
    let bytes = read_capped(path, what, cap)?;
    String::from_utf8(bytes).map_err(|_| ReadError {
        path: path.to_owned(),
        what,
        why: Why::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )),
    })
}

/// [`read_capped`] off the runtime's threads, giving up after [`READ_TIMEOUT`]: for code that
/// runs beside the data path (a reload). A read that times out is left to finish on the
/// blocking pool; its result is dropped.
pub async fn read_capped_async(
    path: &Path,
    what: &'static str,
    cap: u64,
) -> Result<Vec<u8>, ReadError> {
    let owned = path.to_owned();
    let task = tokio::task::spawn_blocking(move || read_capped(&owned, what, cap));
    match tokio::time::timeout(READ_TIMEOUT, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ReadError {
            path: path.to_owned(),
            what,
            why: Why::Io(io::Error::other(join.to_string())),
        }),
        Err(_) => Err(ReadError {
            path: path.to_owned(),
            what,
            why: Why::TimedOut(READ_TIMEOUT),
        }),
    }
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    // nothing for a regular file, whose reads never block on it.
    #[cfg(target_os = "linux")]
    let o_nonblock = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    #[cfg(not(target_os = "linux"))]
    let o_nonblock = 0x4; // the BSDs' and macOS's value
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(o_nonblock)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder, removed when the test is done with it (even when it fails).
    struct Temp(PathBuf);

    impl std::ops::Deref for Temp {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp(name: &str) -> Temp {
        let dir = std::env::temp_dir().join(format!("lb-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Temp(dir)
    }

    #[test]
    fn a_regular_file_under_the_cap_is_read_whole() {
        let dir = temp("ok");
        let p = dir.join("a.toml");
        std::fs::write(&p, b"listen = 1\n").unwrap();
        assert_eq!(read_capped(&p, "config file", 11).unwrap(), b"listen = 1\n");
        let e = read_capped(&p, "config file", 10).unwrap_err().to_string();
        assert!(e.contains("larger than the 10-byte limit"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_private_file_must_be_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp("private");
        let p = dir.join("tickets.key");
        std::fs::write(&p, b"s3cret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_private(&p, "ticket key file", MAX_SECRET)
            .unwrap_err()
            .to_string();
        assert!(e.contains("readable by other users (mode 640)"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_private(&p, "ticket key file", MAX_SECRET).unwrap(),
            b"s3cret"
        );
    }

    #[test]
    fn devices_directories_and_missing_files_are_refused_with_their_name() {
        let e = read_capped(Path::new("/dev/zero"), "config file", MAX_CONFIG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read config file /dev/zero: not a regular file (a character device)"
        );
        let dir = temp("dir");
        let e = read_capped(&dir, "certificate file", MAX_PEM).unwrap_err();
        assert!(e.to_string().contains("(a directory)"), "{e}");
        let e = read_capped(&dir.join("nope"), "key file", MAX_PEM).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_nobody_writes_to_is_refused_at_once() {
        let dir = temp("fifo");
        let p = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
        // Without O_NONBLOCK the open itself would wait for a writer, forever.
        let e = read_capped(&p, "config file", MAX_CONFIG).unwrap_err();
        assert!(
            e.to_string().ends_with("not a regular file (a FIFO)"),
            "{e}"
        );
    }
}
