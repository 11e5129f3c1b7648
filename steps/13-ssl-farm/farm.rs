//! The farm itself: its members (real processes of the real binaries), the config file each
//! one reads, and the changes that keep them consistent while it runs.
//!
//! Every change follows one rule, the one an operator follows by hand: **the tier in front
//! learns first.** Adding a member: start it, wait for its `listening on`, then rewrite and
//! reload (SIGHUP) the configs of the tier in front so traffic starts to reach it. Removing:
//! rewrite and reload the tier in front *first*, wait until each has really reloaded (its
//! `/metrics` counts the reload), and only then stop the member with SIGTERM, which drains it
//! (chapter 10): it finishes what is in flight, and nothing new arrives.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// How long a member may take to print `listening on`: debug builds on a loaded machine are
/// slow to start, and a member that never answers must not hang the farm.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a reload may take before the farm reports it failed (the balancers' own limit is
/// 10 s).
const RELOAD_LIMIT: Duration = Duration::from_secs(15);
/// How long a stopping member may drain before it is killed: its drain-timeout, and a margin.
const STOP_LIMIT: Duration = Duration::from_secs(DRAIN_SECS + 5);
/// The drain-timeout every balancer of the farm is given.
const DRAIN_SECS: u64 = 30;
/// The most members a tier may have: one per address of its /24.
const MAX_MEMBERS: u32 = 254;
/// Ticket keys kept in the file: older, current, next (`lb::tickets`).
const TICKET_KEYS: usize = 3;

/// The four tiers of seed 000, front to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Tier 1: `tcp-lb`, TLS passed through.
    L4,
    /// Tier 2: `tcp-lb` terminating TLS.
    Offload,
    /// Tier 3: `http-lb`, cookie affinity.
    L7,
    /// Tier 4: `dummy-server`.
    App,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::L4, Tier::Offload, Tier::L7, Tier::App];

    /// The name `farm.json` and the table use.
    pub fn key(self) -> &'static str {
        match self {
            Tier::L4 => "l4",
            Tier::Offload => "offload",
            Tier::L7 => "l7",
            Tier::App => "app",
        }
    }

    /// The word commands use: `add offloader`, `remove app 2`.
    pub fn parse(word: &str) -> Option<Tier> {
        match word {
            "offloader" | "offloaders" | "offload" => Some(Tier::Offload),
            "l7" => Some(Tier::L7),
            "app" | "apps" => Some(Tier::App),
            _ => None,
        }
    }

    pub fn binary(self) -> &'static str {
        match self {
            Tier::L4 | Tier::Offload => "tcp-lb",
            Tier::L7 => "http-lb",
            Tier::App => "dummy-server",
        }
    }

    /// The tier whose configs list this one's members.
    pub fn front(self) -> Option<Tier> {
        match self {
            Tier::L4 => None,
            Tier::Offload => Some(Tier::L4),
            Tier::L7 => Some(Tier::Offload),
            Tier::App => Some(Tier::L7),
        }
    }

    /// Each tier on its own loopback /24, so that each looks like its own host: 127.0.1.x
    /// for offloaders, 127.0.2.x for L7, 127.0.3.x for applications.
    fn host(self, number: u32) -> IpAddr {
        let net = Tier::ALL.iter().position(|&t| t == self).unwrap_or(0) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, net, number as u8))
    }

    fn name(self, number: u32) -> String {
        match self {
            Tier::L4 => "l4".to_owned(),
            Tier::Offload => format!("offload{number}"),
            Tier::L7 => format!("l7-{number}"),
            Tier::App => format!("app{number}"),
        }
    }
}

/// One running process of the farm, as `farm.json` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    pub tier: Tier,
    /// For an application, the name it answers with in `x-served-by`.
    pub name: String,
    pub pid: u32,
    pub address: SocketAddr,
    /// Its `/metrics` and `/health` (balancers only).
    pub admin: Option<SocketAddr>,
    /// The config file it reads (balancers only: `dummy-server` takes flags).
    pub config: Option<PathBuf>,
    pub log: PathBuf,
    #[serde(skip)]
    pub number: u32,
    /// Becomes `Some(how it ended)` when the process has exited.
    #[serde(skip)]
    exited: watch::Receiver<Option<String>>,
}

/// A member that exited, as the watcher of its process reports it.
pub struct Exit {
    pub tier: Tier,
    pub number: u32,
    pub pid: u32,
    pub how: String,
}

/// The whole farm: where it keeps its files, and its members.
pub struct Farm {
    pub dir: PathBuf,
    bins: PathBuf,
    pub listen: SocketAddr,
    members: Vec<Member>,
    /// The next number of each tier: numbers are never reused, so `remove offloader 2` always
    /// means the same process.
    next: [u32; 4],
    exits: mpsc::UnboundedSender<Exit>,
    /// Members being stopped on purpose: their exit is not news.
    stopping: Vec<u32>,
    /// Members taken out of the farm and draining, until they exit (the dashboard shows them).
    draining: Vec<Member>,
    /// Who is in the farm, for the dashboard: sent anew with every change.
    roster: watch::Sender<Roster>,
    /// Tier 3 speaks HTTP/2 to the applications (`--app-protocol h2c`, chapter 17): what gRPC
    /// needs end to end.
    pub apps_h2c: bool,
}

/// The farm's members as the dashboard sees them.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    pub members: Vec<Member>,
    pub draining: Vec<Member>,
}

#[derive(Serialize)]
struct FarmJson<'a> {
    listen: SocketAddr,
    ca: PathBuf,
    processes: &'a [Member],
}

impl Farm {
    /// Prepares `dir`: a fresh CA and certificate, the shared ticket keys and affinity secret.
    pub fn new(
        dir: &Path,
        bins: PathBuf,
        listen: SocketAddr,
        leaf_key: lb::certs::LeafKey,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> anyhow::Result<Farm> {
        for tier in [Tier::L4, Tier::Offload, Tier::L7, Tier::App] {
            let bin = bins.join(tier.binary());
            if !bin.is_file() {
                anyhow::bail!(
                    "ssl-farm starts the real binaries and {} is missing: build them first with \
                     `cargo build --release` (or pass --bin-dir)",
                    bin.display()
                );
            }
        }
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let names: Vec<String> = lb::certs::DEFAULT_NAMES.map(str::to_owned).to_vec();
        let bundle =
            lb::certs::generate_with(&names, leaf_key).context("cannot make the certificates")?;
        write(&dir.join("ca.pem"), &bundle.ca_cert_pem, false)?;
        write(&dir.join("cert.pem"), &bundle.leaf_cert_pem, false)?;
        write(&dir.join("key.pem"), &bundle.leaf_key_pem, true)?;
        let keys: Vec<String> = (0..TICKET_KEYS - 1).map(|_| random_hex(48)).collect();
        write_ticket_keys(&dir, &keys)?;
        write(&dir.join("affinity.secret"), &(random_hex(32) + "\n"), true)?;
        Ok(Farm {
            dir,
            bins,
            listen,
            members: Vec::new(),
            next: [1; 4],
            exits,
            stopping: Vec::new(),
            draining: Vec::new(),
            roster: watch::Sender::new(Roster::default()),
            apps_h2c: false,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Who is in the farm now and after every change: what the dashboard reads.
    pub fn roster(&self) -> watch::Receiver<Roster> {
        self.roster.subscribe()
    }

    pub fn count(&self, tier: Tier) -> usize {
        self.members.iter().filter(|m| m.tier == tier).count()
    }

    fn of(&self, tier: Tier) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.tier == tier)
    }

    /// Starts one more member of `tier` and waits until it listens. The tier in front is not
    /// told: [`Farm::add`] does that, and the first start builds back to front instead.
    pub async fn start(&mut self, tier: Tier) -> anyhow::Result<Member> {
        let slot = Tier::ALL.iter().position(|&t| t == tier).unwrap_or(0);
        let number = self.next[slot];
        if number > MAX_MEMBERS {
            anyhow::bail!("tier {} has used all {MAX_MEMBERS} addresses", tier.key());
        }
        self.next[slot] += 1;
        let name = tier.name(number);
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let logfile = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let config = (tier != Tier::App).then(|| self.dir.join(format!("{name}.toml")));
        let mut cmd = Command::new(self.bins.join(tier.binary()));
        match &config {
            Some(path) => {
                write(path, &self.config_text(tier, number), false)?;
                cmd.arg("--config").arg(path);
            }
            None => {
                let listen = SocketAddr::new(tier.host(number), 0);
                cmd.args(["--listen", &listen.to_string(), "--name", &name]);
            }
        }
        // Standard input is a pipe whose writing end only this process holds (tokio makes it
        // close-on-exec, so no other child inherits it): when ssl-farm dies, however it dies,
        // the kernel closes it and the child, told by LB_STOP_ON_STDIN_EOF to watch for that,
        // drains and exits (`lb::cli::shutdown_signal`). No orphan outlives the farm.
        cmd.stdin(Stdio::piped())
            .env(lb::cli::STOP_ON_STDIN_EOF, "1")
            // Run in the state folder, which names the farm each process belongs to: tests
            // (and `ls -l /proc/*/cwd`) find a farm's processes by it.
            .current_dir(&self.dir)
            .stdout(Stdio::piped())
            .stderr(logfile)
            // Its own process group: a Ctrl-C in the terminal reaches ssl-farm alone, which
            // stops the tiers front to back. Delivered to every child at once, it would make
            // each drain while the next one's SIGTERM turned that drain into a cut.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", tier.binary()))?;
        let pid = child.id().unwrap_or(0);
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let listeners = if tier == Tier::App { 1 } else { 2 };
        let mut addrs = Vec::new();
        let ready = async {
            while addrs.len() < listeners {
                match stdout.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(a) = line.strip_prefix("listening on ") {
                            addrs.push(a.parse::<SocketAddr>()?);
                        }
                    }
                    _ => anyhow::bail!("exited"),
                }
            }
            Ok(())
        };
        let started = tokio::time::timeout(START_LIMIT, ready).await;
        if !matches!(started, Ok(Ok(()))) {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let why = last_line(&log).unwrap_or_else(|| "no output".to_owned());
            let why = why.strip_prefix("error: ").unwrap_or(&why);
            anyhow::bail!("{name} ({}) did not start: {why}", tier.binary());
        }
        // Keep reading: a child that writes to a pipe nobody reads would block.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let (tell, exited) = watch::channel(None);
        let exits = self.exits.clone();
        let lifeline = child.stdin.take();
        tokio::spawn(async move {
            let waited = child.wait().await;
            // Held until the child is gone: dropping it earlier would tell the child to stop.
            drop(lifeline);
            let how = match waited {
                Ok(status) => describe(status),
                Err(e) => format!("cannot be waited for: {e}"),
            };
            let _ = tell.send(Some(how.clone()));
            let _ = exits.send(Exit {
                tier,
                number,
                pid,
                how,
            });
        });
        let member = Member {
            tier,
            name,
            pid,
            address: addrs[0],
            admin: addrs.get(1).copied(),
            config,
            log,
            number,
            exited,
        };
        self.members.push(member.clone());
        // Front to back, as the table and farm.json list them.
        self.members.sort_by_key(|m| (m.tier, m.number));
        self.write_json()?;
        Ok(member)
    }

    /// Where clients connect: tier 1's address once it listens (the real port, when
    /// `--listen` asked for port 0).
    pub fn entry(&self) -> SocketAddr {
        self.of(Tier::L4).next().map_or(self.listen, |m| m.address)
    }

    /// `add TIER`: start a member, then let the tier in front send it traffic.
    pub async fn add(&mut self, tier: Tier) -> anyhow::Result<String> {
        let name = self.start(tier).await?.name.clone();
        self.reconfigure_front(tier).await?;
        Ok(format!("{name} added"))
    }

    /// `remove TIER N`: the tier in front stops sending it traffic, then it drains and stops.
    /// Returns at once; the drain goes on in the returned task.
    pub async fn remove(
        &mut self,
        tier: Tier,
        number: u32,
    ) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let Some(i) = self
            .members
            .iter()
            .position(|m| m.tier == tier && m.number == number)
        else {
            anyhow::bail!("there is no {}", tier.name(number));
        };
        if self.count(tier) == 1 {
            anyhow::bail!(
                "{} is the last of its tier: add another first",
                self.members[i].name
            );
        }
        let member = self.members.remove(i);
        self.stopping.push(member.pid);
        self.draining.push(member.clone());
        self.write_json()?;
        if let Err(e) = self.reconfigure_front(tier).await {
            // The front may still send it traffic: keep it running, and in the farm.
            self.draining.retain(|m| m.pid != member.pid);
            self.members.insert(i, member);
            self.write_json()?;
            return Err(e);
        }
        let name = member.name.clone();
        let draining = tokio::spawn(async move {
            stop(&member).await;
        });
        Ok((
            format!("{name} removed from the tier in front; draining"),
            draining,
        ))
    }

    /// A member exited: `true` when nobody asked it to, in which case it is dropped from the
    /// farm (farm.json too). The caller reports it, then [`Farm::reconfigure_front`].
    pub fn forget(&mut self, exit: &Exit) -> anyhow::Result<bool> {
        if let Some(i) = self.stopping.iter().position(|&p| p == exit.pid) {
            self.stopping.remove(i);
            self.draining.retain(|m| m.pid != exit.pid);
            self.publish();
            return Ok(false);
        }
        let Some(i) = self
            .members
            .iter()
            .position(|m| m.tier == exit.tier && m.number == exit.number)
        else {
            return Ok(false);
        };
        self.members.remove(i);
        self.write_json()?;
        Ok(true)
    }

    /// `rotate keys`: a new *next* key, the oldest dropped, every offloader reloaded. In any
    /// order: see `lb::tickets`.
    pub async fn rotate_keys(&mut self) -> anyhow::Result<String> {
        let path = self.dir.join("tickets.key");
        let text = std::fs::read_to_string(&path).context("cannot read the ticket keys")?;
        let mut keys: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        keys.push(random_hex(48));
        while keys.len() > TICKET_KEYS {
            keys.remove(0);
        }
        write_ticket_keys(&self.dir, &keys)?;
        let offloaders: Vec<Member> = self.of(Tier::Offload).cloned().collect();
        for member in &offloaders {
            reload(member).await?;
        }
        Ok(format!(
            "ticket keys rotated; {} offloaders reloaded",
            offloaders.len()
        ))
    }

    /// Rewrites and reloads the configs of the tier in front of `tier`.
    pub async fn reconfigure_front(&self, tier: Tier) -> anyhow::Result<()> {
        let Some(front) = tier.front() else {
            return Ok(());
        };
        for member in self.of(front) {
            if let Some(path) = &member.config {
                write(path, &self.config_text(front, member.number), false)?;
                reload(member).await?;
            }
        }
        Ok(())
    }

    /// Stops every member, front to back, each draining what it has in flight.
    pub async fn stop_all(&mut self) {
        for tier in Tier::ALL {
            // The members of one tier drain together.
            let mut stops = tokio::task::JoinSet::new();
            let members: Vec<Member> = self.of(tier).cloned().collect();
            for member in members {
                self.stopping.push(member.pid);
                stops.spawn(async move { stop(&member).await });
            }
            while stops.join_next().await.is_some() {}
            self.members.retain(|m| m.tier != tier);
        }
        let _ = self.write_json();
    }

    /// `farm.json`, rewritten whole (through a temporary file and a rename, so a reader never
    /// sees half of it) whenever the farm changes.
    fn write_json(&self) -> anyhow::Result<()> {
        self.publish();
        let json = serde_json::to_string_pretty(&FarmJson {
            listen: self.entry(),
            ca: self.dir.join("ca.pem"),
            processes: &self.members,
        })?;
        write(&self.dir.join("farm.json"), &(json + "\n"), false)
    }

    fn publish(&self) {
        self.roster.send_replace(Roster {
            members: self.members.clone(),
            draining: self.draining.clone(),
        });
    }

    /// The config file of member `number` of `tier`: the deployment, one file per host.
    fn config_text(&self, tier: Tier, number: u32) -> String {
        let dir = &self.dir;
        let host = tier.host(number);
        let mut t = String::new();
        let _ = match tier {
            Tier::L4 => writeln!(
                t,
                "# Tier 1 of the SSL farm (chapter 13): tcp-lb passing TLS through untouched.\n\
                 # It never holds a key: it spreads connections over the offloaders, checks\n\
                 # them, retries a dead one on another, and tells each who the client is\n\
                 # (PROXY v2).\n\
                 listen = \"{}\"\n\
                 admin = \"127.0.0.1:0\"\n\
                 # One thread: a byte relay that never decrypts has no use for a second core,\n\
                 # and one thread wakes no other (chapter 11).\n\
                 workers = 1\n\
                 strategy = \"round-robin\"\n\
                 connect-timeout = 2\n\
                 drain-timeout = {DRAIN_SECS}\n\
                 \n[health]\ninterval = 1\nrise = 1\nfall = 2",
                self.listen
            ),
            Tier::Offload => writeln!(
                t,
                "# Tier 2: a TLS offloader (tcp-lb terminating TLS). It reads tier 1's PROXY\n\
                 # header, decrypts, and sends plain HTTP to the L7 tier behind a PROXY v2\n\
                 # header of its own that carries the client's address and says \"TLS\".\n\
                 # Every offloader shares tickets.key, so a client resumes whichever it reaches.\n\
                 # It offers HTTP/2 in ALPN, and the header tells the L7 tier which protocol the\n\
                 # client chose (chapter 17).\n\
                 {}\
                 \n[tls]\n\
                 cert = \"{}\"\n\
                 key = \"{}\"\n\
                 ticket-keys = \"{}\"\n\
                 alpn = [\"h2\", \"http/1.1\"]\n\
                 \n[health]\ninterval = 1\nrise = 1\nfall = 2",
                behind_tier_1(host),
                dir.join("cert.pem").display(),
                dir.join("key.pem").display(),
                dir.join("tickets.key").display()
            ),
            Tier::L7 => writeln!(
                t,
                "# Tier 3: http-lb, pinning each user to an application by a cookie. Every\n\
                 # instance shares affinity.secret, so they agree with no state between them.\n\
                 {}\
                 \n[http]\n\
                 affinity = \"cookie\"\n\
                 affinity-secret-file = \"{}\"\n\
                 \n[health]\ninterval = 1\nrise = 1\nfall = 2",
                behind_tier_1(host),
                dir.join("affinity.secret").display()
            ),
            Tier::App => Ok(()),
        };
        let behind = match tier {
            Tier::L4 => Tier::Offload,
            Tier::Offload => Tier::L7,
            Tier::L7 | Tier::App => Tier::App,
        };
        if tier != Tier::App {
            for member in self.of(behind) {
                let _ = writeln!(
                    t,
                    "\n[[backend]]  # {}\naddress = \"{}\"",
                    member.name, member.address
                );
                let _ = match behind {
                    // HTTP/2 to the applications (chapter 17): checked by TCP, since the
                    // health check's GET /health is HTTP/1.1.
                    Tier::App if self.apps_h2c => writeln!(t, "protocol = \"h2c\""),
                    Tier::App => writeln!(t, "health-check = \"http\""),
                    // An offloader killed with a ClientHello in its socket: tier 1 gives that
                    // connection to another offloader (a ClientHello changes nothing).
                    Tier::Offload => {
                        writeln!(t, "proxy-protocol = \"v2\"\nretry-unanswered = true")
                    }
                    _ => writeln!(t, "proxy-protocol = \"v2\""),
                };
            }
        }
        t
    }
}

/// The top of an offloader's or an L7 instance's config: its own host, port 0 (the table and
/// farm.json say which port it got), and the PROXY header of the tier in front.
fn behind_tier_1(host: IpAddr) -> String {
    format!(
        "listen = \"{host}:0\"\nadmin = \"{host}:0\"\naccept-proxy = true\n\
         strategy = \"round-robin\"\nconnect-timeout = 2\ndrain-timeout = {DRAIN_SECS}\n"
    )
}

/// SIGHUP `member`, and wait until its `/metrics` counts the reload: only then does it send
/// traffic where its new config says.
async fn reload(member: &Member) -> anyhow::Result<()> {
    let admin = member
        .admin
        .with_context(|| format!("{} has no admin listener", member.name))?;
    let prefix = if member.tier == Tier::L7 {
        "httplb"
    } else {
        "tcplb"
    };
    let before = reloads(admin, prefix).await?;
    signal(member.pid, rustix::process::Signal::HUP)?;
    let wait = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = reloads(admin, prefix).await?;
            if now.1 > before.1 {
                anyhow::bail!(
                    "{} refused its new config (see {})",
                    member.name,
                    member.log.display()
                );
            }
            if now.0 > before.0 {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout(RELOAD_LIMIT, wait).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{} did not reload within {RELOAD_LIMIT:?}", member.name),
    }
}

/// `(ok, failed)` reloads from `/metrics` at `admin`.
async fn reloads(admin: SocketAddr, prefix: &str) -> anyhow::Result<(u64, u64)> {
    let text = metrics(admin, Duration::from_secs(5)).await?;
    let value = |result: &str| {
        let key = format!("{prefix}_config_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no {key} in the metrics of {admin}"))
    };
    Ok((value("ok")?, value("error")?))
}

/// A tier's `/metrics` is a few KiB; more than this is not one of ours.
const MAX_METRICS: usize = 4 << 20;

/// The `/metrics` of the admin listener at `admin`, within `limit`.
pub async fn metrics(admin: SocketAddr, limit: Duration) -> anyhow::Result<String> {
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(admin).await?;
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, "farm")
            .body(lb::http::client::body(""))
            .map_err(std::io::Error::other)?;
        lb::http::client::fetch(tcp, request, MAX_METRICS).await
    };
    let answer = tokio::time::timeout(limit, fetch)
        .await
        .with_context(|| format!("{admin} did not answer within {limit:?}"))??;
    if !answer.status.is_success() {
        anyhow::bail!("{admin} answered {} to GET /metrics", answer.status);
    }
    Ok(String::from_utf8_lossy(&answer.body).into_owned())
}

/// SIGTERM, then up to [`STOP_LIMIT`] to drain, then SIGKILL.
async fn stop(member: &Member) {
    let mut exited = member.exited.clone();
    if exited.borrow().is_some() {
        return;
    }
    let _ = signal(member.pid, rustix::process::Signal::TERM);
    let done = exited.wait_for(Option::is_some);
    if tokio::time::timeout(STOP_LIMIT, done).await.is_err() {
        tracing::warn!(process = %member.name, "still running {STOP_LIMIT:?} after SIGTERM: killing it");
        let _ = signal(member.pid, rustix::process::Signal::KILL);
        let _ = exited.wait_for(Option::is_some).await;
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("no such process")?;
    rustix::process::kill_process(pid, signal).context("cannot signal the process")?;
    Ok(())
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => "killed (SIGKILL)".to_owned(),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown".to_owned(),
    }
}

/// The last non-empty line of a log file: what a member said before it died.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    // The system's generator does not fail on Linux once booted; a zeroed key would be worse
    // than stopping, so fall back to a second source rather than to nothing.
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        buf.iter_mut().for_each(|b| *b = rand::random());
    }
    buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_ticket_keys(dir: &Path, keys: &[String]) -> anyhow::Result<()> {
    let mut text = String::from(
        "# Session-ticket keys of the farm's offloaders (lb::tickets): oldest first, the line\n\
         # before the last encrypts, the last is next. Rotate with `rotate keys`.\n",
    );
    for key in keys {
        text.push_str(key);
        text.push('\n');
    }
    write(&dir.join("tickets.key"), &text, true)
}

/// Writes `path` whole through a temporary file and a rename; `private` files are created
/// mode 600 (keys, secrets), never readable by others even for an instant.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
