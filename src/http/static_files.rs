//! Serving a folder directly (chapter 16, seed 002's "static content served directly"): the
//! pictures, stylesheets and scripts that need no application, answered by the proxy without
//! a trip to a backend.
//!
//! What a browser and a cache expect from it, as nginx's `root` gives it: `ETag` and
//! `Last-Modified` with `304 Not Modified` on `If-None-Match` / `If-Modified-Since`; one byte
//! range (`Range: bytes=…`, `206`, `416` when unsatisfiable, `If-Range`); a content type by
//! extension; `index.html` for a folder. Several ranges at once get the whole file (allowed:
//! a server may ignore `Range`).
//!
//! And one thing above all: **no path ever leaves the folder.** The request path is
//! percent-decoded once; a NUL byte is refused (400); a `..` segment, decoded or not, is
//! refused (404, as if it were not there); names starting with a dot are not served unless
//! `--static-dotfiles` says so. That is the trap of this feature: a static route that serves
//! `/etc/passwd` to `GET /static/../../etc/passwd`.
//!
//! And the path is never checked first and opened after: a check ("this resolves inside")
//! followed by an open is a race, since a folder in the middle of the path can be swapped for
//! a link pointing out between the two (and a remembered check widens the window). Every open
//! is one `openat2(root, path, RESOLVE_BENEATH)` from a handle on the folder taken at start:
//! the kernel walks the path and refuses, during that very walk, any step that would leave the
//! folder (a `..` above it, an absolute link, a relative link pointing out). A relative link
//! that stays inside (`latest -> v2`) is followed; an absolute one is refused even when it
//! points inside, since the kernel cannot tell where it would land without leaving.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};

use super::body::{Download, Payload};

/// One folder served under a path prefix.
#[derive(Clone, Debug)]
pub struct StaticDir {
    /// Requests whose path starts with it (it starts and ends with `/`).
    pub prefix: String,
    /// The folder, absolute and with symbolic links resolved, for logs.
    pub root: PathBuf,
    /// A handle on it, taken at start: every file is opened from it (see the module's header).
    beneath: std::sync::Arc<Beneath>,
    /// What recent paths resolved to (see [`Known`]), shared by the clones of a config.
    known: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, Known>>>,
    /// Whether names starting with a dot are served (`--static-dotfiles`): a site's folder
    /// often holds `.env`, `.git/` or `.htpasswd`, which no visitor should read.
    dotfiles: bool,
}

/// How long a resolved path is trusted before it is resolved again: a file changed or a link
/// moved is seen within this (nginx's `open_file_cache` does the same, for 60 s by default).
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Paths remembered at most; past it the memory is cleared.
const KNOWN_MAX: usize = 1024;

/// A path's resolution, remembered: resolving (`realpath` is a system call per path
/// component) and `stat` cost more than reading a small file; with it, a tiny file's bytes.
#[derive(Clone, Debug)]
struct Known {
    resolved: Resolved,
    at: std::time::Instant,
}

impl StaticDir {
    /// `prefix` served from `dir`, which must exist and be a folder.
    pub fn new(prefix: &str, dir: &Path) -> Result<StaticDir, String> {
        if !prefix.starts_with('/') {
            return Err(format!("static prefix `{prefix}` must start with /"));
        }
        let root = dir
            .canonicalize()
            .map_err(|e| format!("static folder {}: {e}", dir.display()))?;
        if !root.is_dir() {
            return Err(format!("static folder {} is not a folder", dir.display()));
        }
        let beneath =
            Beneath::new(&root).map_err(|e| format!("static folder {}: {e}", dir.display()))?;
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(StaticDir {
            prefix,
            root,
            beneath: std::sync::Arc::new(beneath),
            known: Default::default(),
            dotfiles: false,
        })
    }

    /// Serves names that start with a dot too.
    pub fn with_dotfiles(mut self, allow: bool) -> StaticDir {
        self.dotfiles = allow;
        self
    }

    /// Whether a request for `path` is this folder's: the prefix, or the prefix without its
    /// final `/` (which is redirected to it).
    pub fn matches(&self, path: &str) -> bool {
        path.starts_with(&self.prefix) || path == self.prefix.trim_end_matches('/')
    }
}

/// `--static PREFIX=DIR`.
pub fn parse_flag(s: &str) -> Result<(String, PathBuf), String> {
    let (prefix, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PREFIX=DIR (for example /assets/=public)"))?;
    Ok((prefix.to_owned(), PathBuf::from(dir)))
}

/// The answer to `method path` with `headers` from `dir`.
pub async fn serve(
    dir: &StaticDir,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<Download> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == dir.prefix.trim_end_matches('/') {
        return redirect(&dir.prefix);
    }
    // A route's prefix without its `/` also matches `/assetsX`: that is not under the folder.
    let Some(rest) = path.strip_prefix(dir.prefix.as_str()) else {
        return not_found();
    };
    let Some(relative) = safe_relative(rest) else {
        return text(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let Some(relative) = relative else {
        return not_found();
    };
    let hidden = |c: std::path::Component<'_>| c.as_os_str().as_encoded_bytes().starts_with(b".");
    if !dir.dotfiles && relative.components().any(hidden) {
        return not_found();
    }
    let file = match dir.resolve(&relative) {
        Resolved::File(file) => file,
        // Never `//host/…` or `/\host/…`: a browser reads those as another site (an open
        // redirect). Whatever the request's leading slashes, the location has one.
        Resolved::Folder if !path.ends_with('/') => {
            let rest = path.trim_start_matches(['/', '\\']);
            return redirect(&format!("/{rest}/"));
        }
        Resolved::Folder | Resolved::Nothing => return not_found(),
    };
    let (resolved, len, modified, etag) = (&file.path, file.len, file.modified, &file.etag);
    let beneath = &dir.beneath;
    let mut response = Response::new(Download::text(""));
    let h = response.headers_mut();
    h.insert(header::ETAG, file.etag_value.clone());
    h.insert(header::LAST_MODIFIED, file.last_modified.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified(headers, etag, modified) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(resolved)),
    );
    let range = match headers.get(header::RANGE) {
        Some(r) if if_range_holds(headers, etag, modified) => byte_range(r, len),
        _ => Ranged::Whole,
    };
    let (status, start, count) = match range {
        Ranged::Whole => (StatusCode::OK, 0, len),
        Ranged::Part(start, end) => {
            h.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{len}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Ranged::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
            r.headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{len}")));
            return r;
        }
    };
    h.insert(header::CONTENT_LENGTH, value(&count.to_string()));
    *response.status_mut() = status;
    if method == Method::HEAD {
        return response;
    }
    // Small files in one read, big ones streamed (the rest of the file is read as the client
    // takes it).
    let tiny = file.content.get_or_init(|| {
        (len <= TINY)
            .then(|| read_small(beneath, resolved, 0, len).ok())
            .flatten()
    });
    let payload = if let Some(content) = tiny {
        let (from, to) = (start as usize, (start + count) as usize);
        Ok(Payload::Full(Some(content.slice(from..to))))
    } else if count <= SMALL {
        read_small(beneath, resolved, start, count).map(|bytes| Payload::Full(Some(bytes)))
    } else {
        open_at(beneath, resolved, start)
            .map(|file| Payload::file(tokio::fs::File::from_std(file), count))
    };
    match payload {
        Ok(payload) => {
            let headers = std::mem::take(response.headers_mut());
            let mut full = Response::new(Download::new(payload, None));
            *full.status_mut() = status;
            *full.headers_mut() = headers;
            full
        }
        // Gone, or moved out of reach, since its resolution was remembered.
        Err(e) if Beneath::out_of_reach(&e) => not_found(),
        Err(e) => {
            tracing::warn!(file = %resolved.display(), "cannot read: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n")
        }
    }
}

/// Files up to this size are read whole and sent in one frame.
const SMALL: u64 = 64 * 1024;
/// Files up to this size are kept in memory while their resolution is remembered (at most
/// [`KNOWN_MAX`] of them: 16 MiB).
const TINY: u64 = 16 * 1024;

impl StaticDir {
    /// [`resolve`], remembered for [`KNOWN_FOR`].
    fn resolve(&self, relative: &Path) -> Resolved {
        let now = std::time::Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.get(relative)
            && now.duration_since(k.at) < KNOWN_FOR
        {
            return k.resolved.clone();
        }
        drop(known);
        let resolved = resolve(&self.beneath, relative);
        known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(
            relative.to_owned(),
            Known {
                resolved: resolved.clone(),
                at: now,
            },
        );
        resolved
    }
}

/// What a path under the folder turned out to be.
#[derive(Clone, Debug)]
enum Resolved {
    File(std::sync::Arc<FileInfo>),
    /// A folder without an `index.html`.
    Folder,
    Nothing,
}

/// A file to serve, with its validators formatted once.
#[derive(Debug)]
struct FileInfo {
    /// Relative to the folder: opened from its handle each time (never a remembered absolute
    /// path, which a swapped folder would send elsewhere).
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    etag: String,
    etag_value: HeaderValue,
    last_modified: HeaderValue,
    /// A tiny file's bytes, read once while its resolution is remembered: a 4 KiB asset then
    /// costs no system call at all. `None` inside: larger, or unreadable.
    content: std::sync::OnceLock<Option<bytes::Bytes>>,
}

impl FileInfo {
    fn resolved(path: PathBuf, meta: &std::fs::Metadata) -> Resolved {
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let etag = etag(meta.len(), modified);
        Resolved::File(std::sync::Arc::new(FileInfo {
            path,
            len: meta.len(),
            modified,
            etag_value: value(&etag),
            last_modified: value(&httpdate::fmt_http_date(modified)),
            etag,
            content: std::sync::OnceLock::new(),
        }))
    }
}

/// The file `relative` names under the folder (or its folder's `index.html`), found by
/// opening it from the folder's handle (see [`Beneath`]).
///
/// On the serving thread, as nginx does without `aio`: the folder's metadata and small files
/// are in the page cache, and these calls take microseconds, where handing each to tokio's
/// blocking pool costs a thread switch and tens of microseconds. A folder on a disk that can
/// stall is better served by a backend.
fn resolve(beneath: &Beneath, relative: &Path) -> Resolved {
    let Ok(meta) = beneath.open(relative).and_then(|f| f.metadata()) else {
        return Resolved::Nothing;
    };
    if meta.is_file() {
        return FileInfo::resolved(relative.to_owned(), &meta);
    }
    if !meta.is_dir() {
        return Resolved::Nothing;
    }
    let index = relative.join("index.html");
    match beneath.open(&index).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => FileInfo::resolved(index, &meta),
        _ => Resolved::Folder,
    }
}

fn read_small(beneath: &Beneath, path: &Path, start: u64, count: u64) -> io::Result<bytes::Bytes> {
    use std::io::Read as _;
    let mut file = open_at(beneath, path, start)?;
    let mut buf = vec![0u8; count as usize];
    file.read_exact(&mut buf)?;
    Ok(bytes::Bytes::from(buf))
}

/// A handle on the served folder, and the one way files under it are opened.
#[derive(Debug)]
struct Beneath {
    root: std::os::fd::OwnedFd,
    #[cfg(not(target_os = "linux"))]
    path: PathBuf,
}

impl Beneath {
    /// A handle on `root`; on Linux, also proof that this kernel has `openat2` (5.6 and later;
    /// a container's seccomp profile may refuse it too), so that a folder that cannot be served
    /// safely is a start-up error, not a 404 per request.
    fn new(root: &Path) -> io::Result<Beneath> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let beneath = Beneath {
            root: fd,
            #[cfg(not(target_os = "linux"))]
            path: root.to_owned(),
        };
        if let Err(e) = beneath.open(Path::new("")) {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot be opened beneath itself ({e}): openat2 needs Linux 5.6 or later"),
            ));
        }
        Ok(beneath)
    }

    /// Opens `relative` for reading, without ever leaving the folder: the kernel refuses, while
    /// it walks the path, any `..` above the folder and any link pointing out (or absolute),
    /// so nothing swapped in the meantime can redirect the open. `O_NONBLOCK` so that a FIFO
    /// in the folder is opened (then refused as not a file) instead of blocking the thread.
    #[cfg(target_os = "linux")]
    fn open(&self, relative: &Path) -> io::Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let relative = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            relative
        };
        let fd = rustix::fs::openat2(
            &self.root,
            relative,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// Without `openat2`: resolved, checked to be under the folder, and opened without
    /// following a link at its end. A folder in the middle swapped between the check and the
    /// open is followed: the race the Linux version closes.
    #[cfg(not(target_os = "linux"))]
    fn open(&self, relative: &Path) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let resolved = std::fs::canonicalize(self.path.join(relative))?;
        if !resolved.starts_with(&self.path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(resolved)
    }

    /// Whether a failed open means "not there for this request": missing, or reachable only
    /// by leaving the folder (`EXDEV`), through a loop of links, or through a file where a
    /// folder was (404, as for a path that never existed).
    fn out_of_reach(e: &io::Error) -> bool {
        use rustix::io::Errno;
        let errno = e.raw_os_error().map(Errno::from_raw_os_error);
        e.kind() == io::ErrorKind::NotFound
            || matches!(errno, Some(Errno::XDEV | Errno::LOOP | Errno::NOTDIR))
    }
}

/// The path below the prefix as folder segments: `None` for a NUL byte or bad escape (400),
/// `Some(None)` for anything that tries to climb (`..`), `Some(Some(path))` otherwise.
fn safe_relative(rest: &str) -> Option<Option<PathBuf>> {
    let bytes = percent_decode(rest.as_bytes())?;
    if bytes.contains(&0) {
        return None;
    }
    let decoded = String::from_utf8(bytes).ok()?;
    let mut out = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Some(None),
            s if s.contains('\\') => return Some(None),
            s => out.push(s),
        }
    }
    Some(Some(out))
}

/// `%XX` decoded once (a `%2e%2e` is `..`, and refused as such); `None` for a bad escape.
fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

pub(super) enum Ranged {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range of a `len`-byte file; several (or anything unparsable) is the whole file.
pub(super) fn byte_range(value: &HeaderValue, len: u64) -> Ranged {
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return Ranged::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|f| (f, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(f), Ok(l)) if f <= l => Some((f, l.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Ranged::Whole,
        Some((f, _)) if f >= len => Ranged::Unsatisfiable,
        Some((f, l)) => Ranged::Part(f, l),
    }
}

/// `If-None-Match` (any of its tags, weakly compared, or `*`), else `If-Modified-Since` (the
/// file not changed since, to the second).
fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let bare = etag.trim_start_matches("W/");
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == bare);
    }
    // RFC 9110 §13.1.3: a date that is invalid, or later than now, is ignored.
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .filter(|since| *since <= SystemTime::now());
    since.is_some_and(|since| seconds(modified) <= seconds(since))
}

/// `If-Range`: the range applies only if the client's copy is this version (its strong ETag,
/// or its date).
fn if_range_holds(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|d| seconds(d) == seconds(modified)),
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A strong tag from the size and the modification time, as nginx makes it.
fn etag(len: u64, modified: SystemTime) -> String {
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("\"{len:x}-{nanos:x}\"")
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

/// Opens `path` under the folder at byte `start`.
fn open_at(beneath: &Beneath, path: &Path, start: u64) -> io::Result<std::fs::File> {
    use std::io::Seek as _;
    let mut file = beneath.open(path)?;
    if start > 0 {
        file.seek(io::SeekFrom::Start(start))?;
    }
    Ok(file)
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

fn text(status: StatusCode, body: &'static str) -> Response<Download> {
    let mut r = Response::new(Download::text(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn not_found() -> Response<Download> {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn redirect(to: &str) -> Response<Download> {
    let mut r = text(StatusCode::MOVED_PERMANENTLY, "");
    r.headers_mut().insert(header::LOCATION, value(to));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_or_carry_nul_are_refused() {
        assert_eq!(
            safe_relative("a/b.txt"),
            Some(Some(PathBuf::from("a/b.txt")))
        );
        assert_eq!(safe_relative("./a//b"), Some(Some(PathBuf::from("a/b"))));
        for climbing in [
            "../etc/passwd",
            "a/../../x",
            "%2e%2e/x",
            "%2E%2E%2Fx",
            "a\\..\\b",
        ] {
            assert_eq!(safe_relative(climbing), Some(None), "{climbing}");
        }
        assert_eq!(safe_relative("a%00.txt"), None);
        assert_eq!(safe_relative("a%zz"), None);
        assert_eq!(safe_relative("a%2"), None);
    }

    /// The open itself refuses what leaves the folder, whatever reached it (the request
    /// parser refuses `..` first; this is the second wall), and a FIFO does not block.
    #[test]
    fn opens_stay_beneath_the_folder() {
        let base = std::env::temp_dir().join(format!("lb-beneath-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(base.join("secret"), "x").unwrap();
        std::fs::write(root.join("sub/f"), "f").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("in")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status();
        let beneath = Beneath::new(&root).unwrap();
        for (path, served) in [
            ("sub/f", true),
            ("in", true),
            ("sub/../sub/f", true),
            ("../secret", false),
            ("out", false),
            ("sub/../../secret", false),
            (base.join("secret").to_str().unwrap(), false),
        ] {
            let opened = beneath.open(Path::new(path));
            assert_eq!(opened.is_ok(), served, "{path}");
            if let Err(e) = opened {
                assert!(Beneath::out_of_reach(&e), "{path}: {e}");
            }
        }
        assert!(matches!(resolve(&beneath, Path::new("")), Resolved::Folder));
        if fifo.is_ok_and(|s| s.success()) {
            assert!(matches!(
                resolve(&beneath, Path::new("fifo")),
                Resolved::Nothing
            ));
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn ranges_are_one_satisfiable_span_or_the_whole() {
        let r = |s: &str| byte_range(&HeaderValue::from_str(s).unwrap(), 1000);
        assert!(matches!(r("bytes=0-99"), Ranged::Part(0, 99)));
        assert!(matches!(r("bytes=900-"), Ranged::Part(900, 999)));
        assert!(matches!(r("bytes=-100"), Ranged::Part(900, 999)));
        assert!(matches!(r("bytes=990-5000"), Ranged::Part(990, 999)));
        assert!(matches!(r("bytes=-5000"), Ranged::Part(0, 999)));
        assert!(matches!(r("bytes=1000-"), Ranged::Unsatisfiable));
        assert!(matches!(r("bytes=-0"), Ranged::Unsatisfiable));
        assert!(matches!(r("bytes=0-1,5-6"), Ranged::Whole));
        assert!(matches!(r("bytes=5-1"), Ranged::Whole));
        assert!(matches!(r("items=0-1"), Ranged::Whole));
    }
}
