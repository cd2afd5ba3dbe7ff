//! The command-line client of the admin API: `throttle status`, `limits`,
//! `classes`, `sets`, `rules`, `top`, `source`, `controller`.
//!
//! Tables for people, `--json` for scripts (the API's body as it came). An
//! error of the API is printed as the API worded it. Exit codes:
//! [`EXIT_OK`], [`EXIT_API_ERROR`], [`EXIT_USAGE`] (clap's), [`EXIT_UNREACHABLE`],
//! [`EXIT_NOT_FOUND`].

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as HyperClient},
    rt::TokioExecutor,
};
use serde_json::Value;

use crate::{
    api::ClassList,
    controller::{Algorithm, Mode},
    policy::{Action, Class, ClassLimit, LimitsPatch, Rate, RuleSpec, Target, Unit},
};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The daemon refused the request or failed it (the message says why).
pub const EXIT_API_ERROR: u8 = 1;
/// The command line was wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// The daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// What was asked for does not exist (a source not tracked, a rule id).
pub const EXIT_NOT_FOUND: u8 = 4;

/// How long one request may take; a top-N over millions of sources takes
/// a few seconds.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the admin API is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The daemon's admin API: `host:port` or `http://host:port`.
    #[arg(long, global = true, env = "THROTTLE_ADMIN", default_value = crate::settings::DEFAULT_ADMIN, value_name = "ADDR")]
    pub admin: String,
    /// File holding the bearer token (else `$THROTTLE_TOKEN`).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum LimitsCommand {
    /// Change the fields given (PATCH /v1/limits).
    Set(LimitsPatch),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClassesCommand {
    /// One class, every field (GET /v1/classes/NAME).
    Show { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BansCommand {
    /// Lift a source's bans (DELETE /v1/bans/ADDR): it starts afresh.
    Rm { addr: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RulesCommand {
    /// The rules with their ids.
    List,
    /// Add a rule: `rules add 10.0.0.0/8 deny`, `rules add 2001:db8::/32 limit --rate 100`,
    /// `rules add @blocklist deny`; or many at once, all or none: `rules add --file rules.txt`.
    Add(AddRule),
    /// Remove the rule with this id.
    Rm { id: String },
}

/// `throttle rules add`: a rule of a prefix or of a set, or the rules of a
/// file.
#[derive(Debug, Clone, clap::Args)]
pub struct AddRule {
    /// A prefix (`10.0.0.0/8`) or a set (`@blocklist`).
    #[arg(value_name = "CIDR|@SET", required_unless_present = "file")]
    pub target: Option<Target>,
    /// `allow`, `deny` or `limit`.
    #[arg(value_enum, value_name = "ACTION", required_unless_present = "file")]
    pub action: Option<Action>,
    /// `limit` only: per source, a number per second or `N/second|minute|hour|day`.
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,
    /// `limit` only; defaults to one period's worth of the rate.
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// `limit` only; defaults to packets.
    #[arg(long, value_enum, value_name = "UNIT")]
    pub unit: Option<Unit>,
    /// The rules of a file, added in one change (all, or none when one is
    /// refused): one a line as this command takes them (`10.0.0.0/8 deny`,
    /// `2001:db8::/32 limit --rate 100`; `#` comments), or a JSON list as
    /// `POST /v1/rules` takes it; `-`: standard input.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["target", "action", "rate", "burst", "unit"])]
    pub file: Option<PathBuf>,
}

/// One line of a `rules add --file`: the arguments of `rules add`.
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true)]
struct RuleLine {
    #[command(flatten)]
    rule: AddRule,
}

impl AddRule {
    /// The body of `POST /v1/rules`: one rule, or the list of a file.
    pub fn body(self) -> Result<Value, ClientError> {
        let Some(path) = &self.file else {
            let rule =
                self.spec().ok_or_else(|| ClientError::Usage("a rule needs CIDR|@SET and ACTION".into()))?;
            return Ok(serde_json::to_value(rule).expect("a rule serialises"));
        };
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|e| ClientError::Usage(format!("reading {}: {e}", path.display())))?;
        rules_of_file(&text).map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))
    }

    /// The rule given by the arguments, if they name one.
    fn spec(self) -> Option<RuleSpec> {
        Some(RuleSpec {
            rate: self.rate,
            burst: self.burst,
            unit: self.unit,
            ..RuleSpec::of(self.target?, self.action?)
        })
    }
}

/// What `rules add` prints: the id of the rule added, or of each of a
/// file's.
fn added_text(answer: &Value) -> String {
    match answer["rules"].as_array() {
        Some(rules) => {
            let ids: Vec<String> = rules.iter().map(|r| r["id"].to_string()).collect();
            format!("added {} rules: {}\n", ids.len(), ids.join(" "))
        }
        None => format!("added rule {}\n", answer["id"]),
    }
}

/// The list of rules a file holds: a JSON list as it is, or one rule a
/// line in the form `rules add` takes (each line checked here, so that an
/// error names its line; the daemon checks the values).
fn rules_of_file(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| format!("not a JSON list of rules: {e}"));
    }
    let mut rules = Vec::new();
    for (number, line) in (1..).zip(text.lines()) {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let parsed = <RuleLine as clap::Parser>::try_parse_from(line.split_whitespace())
            .map_err(|e| format!("line {number}: {}", e.render().to_string().lines().next().unwrap_or("")))?;
        let rule = parsed.rule.spec().ok_or_else(|| {
            format!("line {number}: a rule is CIDR|@SET ACTION [--rate R] [--burst N] [--unit U]")
        })?;
        rules.push(serde_json::to_value(rule).expect("a rule serialises"));
    }
    if rules.is_empty() {
        return Err("no rule in the file".to_owned());
    }
    Ok(Value::Array(rules))
}

/// `throttle capture`: dropped packets into a pcap file.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// Drop reasons, comma-separated: `over_limit`, `deny_rule`, `new_source_limit`, `banned`,
    /// `contended` (default: all).
    #[arg(long, value_name = "REASONS")]
    pub reason: Option<String>,
    /// Only sources in this prefix.
    #[arg(long, value_name = "CIDR")]
    pub source: Option<String>,
    /// Only packets of this class (`default` for [limits]).
    #[arg(long, value_name = "NAME")]
    pub class: Option<String>,
    /// Stop after this many packets (default: until Ctrl-C).
    #[arg(short = 'c', long, value_name = "COUNT")]
    pub count: Option<u64>,
    /// One in N matching packets, at random: `1/N`.
    #[arg(long, value_name = "1/N")]
    pub sample: Option<String>,
    /// Bytes kept of each packet (14 to 128).
    #[arg(long, value_name = "BYTES")]
    pub snap: Option<u32>,
    /// The pcap file to write, `-` for standard output (`| tcpdump -r -`).
    #[arg(short = 'w', value_name = "FILE")]
    pub write: PathBuf,
}

impl CaptureArgs {
    /// The query of `GET /v1/capture`.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("reason", self.reason.clone()),
            ("source", self.source.clone()),
            ("class", self.class.clone()),
            ("count", self.count.map(|c| c.to_string())),
            ("sample", self.sample.clone()),
            ("snap", self.snap.map(|s| s.to_string())),
        ] {
            if let Some(value) = value {
                parts.push(format!("{key}={}", encode(&value)));
            }
        }
        parts.join("&")
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SetsCommand {
    /// Load a set from a file, one address or prefix a line (PUT /v1/sets/NAME): a new set, or
    /// a new version of one, switched to at once.
    Load { name: String, file: PathBuf },
    /// Remove a set no rule names (DELETE /v1/sets/NAME).
    Rm { name: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ControllerCommand {
    /// Change parameters (PUT /v1/controller); each flag is optional.
    Set(ControllerSet),
}

/// `throttle controller set`: the parameters people change at a terminal,
/// sent as the merge patch `PUT /v1/controller` takes (the field names are
/// those of [`crate::controller::AdaptiveConfig`]'s).
#[derive(Debug, Clone, Default, clap::Args, serde::Serialize)]
pub struct ControllerSet {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `fair-share` or `scale`.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// Latency objective in milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ms: Option<f64>,
    /// `fair_share`: the part of the capacity (0 to 1) kept for the
    /// sources seen before an overload began.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_reserve: Option<f64>,
}

/// A client subcommand.
#[derive(Debug, Clone)]
pub enum ClientCommand {
    Status,
    Limits(Option<LimitsPatch>),
    Classes(Option<ClassesCommand>),
    Sets(Option<SetsCommand>),
    Events {
        n: usize,
        follow: bool,
    },
    Capture(CaptureArgs),
    Bans(Option<BansCommand>),
    Explain {
        addr: String,
        to: Option<String>,
        syn: bool,
    },
    Rules(RulesCommand),
    Top {
        n: usize,
        by: String,
    },
    /// `top --watch`: refreshed every `interval`, `count` times or until
    /// interrupted.
    Watch {
        n: usize,
        by: String,
        interval: Duration,
        count: Option<u64>,
    },
    Source {
        addr: String,
        reset: bool,
    },
    Controller(Option<ControllerCommand>),
}

/// Why a command failed, and the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {admin}: {reason}")]
    Unreachable { admin: String, reason: String },
    #[error("{message}")]
    Api { status: StatusCode, code: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("unexpected answer from the daemon ({status}): {body}")]
    Unexpected { status: StatusCode, body: String },
}

impl ClientError {
    /// The exit code for this failure.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. } => EXIT_UNREACHABLE,
            Self::Api { status, .. } if *status == StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
            Self::Api { .. } | Self::Unexpected { .. } => EXIT_API_ERROR,
            Self::Usage(_) => EXIT_USAGE,
        }
    }
}

struct Client {
    base: String,
    admin: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let admin = args.admin.trim_end_matches('/').to_owned();
        let base = if admin.contains("://") { admin.clone() } else { format!("http://{admin}") };
        if !base.starts_with("http://") {
            return Err(ClientError::Usage(format!(
                "--admin {admin:?}: the admin API speaks plain HTTP; give host:port or http://host:port"
            )));
        }
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ClientError::Usage(format!("cannot read the token file {}: {e}", path.display()))
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("THROTTLE_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Self { base, admin, token, http })
    }

    /// Sends a request; a 2xx answer's JSON body (null when empty) or the
    /// API's error.
    /// Sends a request (with the token, and `body` as JSON); the answer,
    /// its body not read yet.
    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        body: Option<&Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(accept) = accept {
            request = request.header(hyper::header::ACCEPT, accept);
        }
        let payload = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(body).expect("JSON serialises"))
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ClientError::Usage(format!("--admin {:?}: {e}", self.admin)))?;
        tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable { admin: self.admin.clone(), reason }
    }

    /// The whole answer as JSON, or the API's error.
    async fn read(&self, response: hyper::Response<hyper::body::Incoming>) -> Result<Value, ClientError> {
        let status = response.status();
        let bytes =
            response.into_body().collect().await.map_err(|e| self.unreachable(e.to_string()))?.to_bytes();
        let value: Option<Value> =
            if bytes.is_empty() { Some(Value::Null) } else { serde_json::from_slice(&bytes).ok() };
        match value {
            Some(value) if status.is_success() => Ok(value),
            Some(value) if value["error"]["message"].is_string() => Err(ClientError::Api {
                status,
                code: value["error"]["code"].as_str().unwrap_or_default().to_owned(),
                message: value["error"]["message"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let response = self.send(method, path, None, body).await?;
        self.read(response).await
    }

    /// A `GET` whose answer is read as it comes: its body, or the API's
    /// error.
    async fn stream(&self, path: &str, accept: Option<&str>) -> Result<hyper::body::Incoming, ClientError> {
        let response = self.send(Method::GET, path, accept, None).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        match self.read(response).await {
            // Not a success: `read` answers with the API's error.
            Ok(value) => Err(ClientError::Unexpected { status, body: value.to_string() }),
            Err(err) => Err(err),
        }
    }
}

impl Client {
    /// `throttle capture`: streams the pcap file the daemon writes into
    /// the file asked for (`-`: standard output); how many packets it held.
    async fn capture(&self, args: &CaptureArgs) -> Result<Option<u64>, ClientError> {
        use std::io::Write as _;
        let mut body = self.stream(&format!("/v1/capture?{}", args.query()), None).await?;
        let mut out: Box<dyn std::io::Write> = if args.write.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::File::create(&args.write)
                .map_err(|e| ClientError::Usage(format!("creating {}: {e}", args.write.display())))?;
            Box::new(file)
        };
        let failed = |e: std::io::Error| ClientError::Usage(format!("writing {}: {e}", args.write.display()));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data).map_err(failed)?;
                out.flush().map_err(failed)?;
            }
        }
        drop(out);
        if args.write.as_os_str() == "-" {
            return Ok(None);
        }
        // The file read back: how many packets it holds.
        let file = std::fs::File::open(&args.write).map_err(failed)?;
        let mut reader = pcap_file::pcap::PcapReader::new(file)
            .map_err(|e| ClientError::Usage(format!("reading {} back: {e}", args.write.display())))?;
        let mut records = 0;
        while let Some(packet) = reader.next_packet() {
            if packet.is_ok() {
                records += 1;
            }
        }
        Ok(Some(records))
    }

    /// `top --watch`: the heaviest sources, refreshed every `interval`, with
    /// their rates since the previous refresh, heaviest drop rate first.
    async fn watch(
        &self,
        n: usize,
        by: &str,
        interval: Duration,
        count: Option<u64>,
        json: bool,
    ) -> Result<(), ClientError> {
        // More than shown, so that a source whose totals are not among the
        // top but whose rate is still ranks.
        let path = format!("/v1/sources?top={}&by={}", (n * 4).clamp(40, 10_000), encode(by));
        let mut previous: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
        let mut last = std::time::Instant::now();
        let mut refreshes = 0u64;
        loop {
            let value = self.call(Method::GET, &path, None).await?;
            let secs = last.elapsed().as_secs_f64().max(1e-3);
            last = std::time::Instant::now();
            let mut rows: Vec<(f64, f64, Vec<String>)> = Vec::new();
            let mut seen = std::collections::HashMap::new();
            for s in value["sources"].as_array().into_iter().flatten() {
                let key = format!("{} {} {} {}", s["source"], s["rule"], s["class"], s["limit"]);
                let (passed, dropped) =
                    (s["passed"].as_u64().unwrap_or(0), s["dropped"].as_u64().unwrap_or(0));
                let (p0, d0) = previous.get(&key).copied().unwrap_or((passed, dropped));
                #[expect(clippy::cast_precision_loss, reason = "packet counts")]
                let (pass_rate, drop_rate) =
                    (passed.saturating_sub(p0) as f64 / secs, dropped.saturating_sub(d0) as f64 / secs);
                seen.insert(key, (passed, dropped));
                let owner = s["class"].as_str().map_or_else(
                    || s["rule"].as_u64().map_or_else(|| "default".to_owned(), |r| format!("rule {r}")),
                    |class| format!("{class} {}", s["limit"].as_str().unwrap_or("0")),
                );
                rows.push((
                    drop_rate,
                    pass_rate,
                    vec![
                        cell(&s["source"]),
                        owner,
                        format!("{pass_rate:.1}"),
                        format!("{drop_rate:.1}"),
                        cell(&s["passed"]),
                        cell(&s["dropped"]),
                    ],
                ));
            }
            previous = seen;
            let passed_first = by == "passed";
            rows.sort_by(|a, b| {
                let (a, b) = if passed_first { (a.1, b.1) } else { (a.0, b.0) };
                b.total_cmp(&a)
            });
            rows.truncate(n);
            let shown = if json {
                crate::logging::print_text(&format!("{value}\n"))
            } else {
                let table = table(
                    &["SOURCE", "LIMIT", "PASSED/S", "DROPPED/S", "PASSED", "DROPPED"],
                    &rows.into_iter().map(|r| r.2).collect::<Vec<_>>(),
                );
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                // Clear the screen and go home, as `top` does.
                crate::logging::print_text(&format!("\x1b[2J\x1b[H{now}  throttle top --watch (every {:.1} s, rates since the last refresh)\n\n{table}", interval.as_secs_f64()))
            };
            // Nobody reads any more (`throttle top --watch --json | head -3`).
            if !shown {
                return Ok(());
            }
            refreshes += 1;
            if count.is_some_and(|count| refreshes >= count) {
                return Ok(());
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Follows the live event stream at `path`, printing each event as it
    /// comes (its JSON with `json`), until the daemon closes it.
    async fn follow(&self, path: &str, json: bool) -> Result<(), ClientError> {
        let mut body = self.stream(path, Some("text/event-stream")).await?;
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e.to_string()))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(event) = line.trim_end().strip_prefix("data:") {
                    let event: Value = serde_json::from_str(event.trim()).unwrap_or(Value::Null);
                    let line = if json { format!("{event}\n") } else { event_line(&event) };
                    // Nobody reads any more (`throttle events -f | head -3`).
                    if !crate::logging::print_text(&line) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Runs a command that prints as it goes (`top --watch`, `events
/// --follow`, `capture`), or hands any other back.
async fn run_live(
    client: &Client,
    args: &ClientArgs,
    command: ClientCommand,
) -> Result<Result<String, ClientCommand>, ClientError> {
    match command {
        ClientCommand::Watch { n, by, interval, count } => {
            client.watch(n, &by, interval, count, args.json).await?;
            Ok(Ok(String::new()))
        }
        ClientCommand::Capture(capture) => {
            if let Some(records) = client.capture(&capture).await? {
                crate::logging::eprint_line(format_args!(
                    "{records} packets captured into {}",
                    capture.write.display()
                ));
            }
            Ok(Ok(String::new()))
        }
        ClientCommand::Events { n, follow: true } => {
            client.follow(&format!("/v1/events?n={n}"), args.json).await?;
            Ok(Ok(String::new()))
        }
        other => Ok(Err(other)),
    }
}

/// Runs one client command; what to print on success.
pub async fn run(args: &ClientArgs, command: ClientCommand) -> Result<String, ClientError> {
    let client = Client::new(args)?;
    let command = match run_live(&client, args, command).await? {
        Ok(printed) => return Ok(printed),
        Err(command) => command,
    };
    let (value, table): (Value, fn(&Value) -> String) = match command {
        ClientCommand::Status => (client.call(Method::GET, "/v1/status", None).await?, status_table),
        ClientCommand::Limits(None) => (client.call(Method::GET, "/v1/limits", None).await?, limits_table),
        ClientCommand::Limits(Some(set)) => {
            let body = limits_patch(&set)?;
            (client.call(Method::PATCH, "/v1/limits", Some(&body)).await?, limits_table)
        }
        ClientCommand::Classes(None) => (client.call(Method::GET, "/v1/classes", None).await?, classes_table),
        ClientCommand::Bans(None) => (client.call(Method::GET, "/v1/bans", None).await?, bans_table),
        ClientCommand::Explain { addr, to, syn } => {
            let mut path = format!("/v1/explain?source={}&syn={syn}", encode(&addr));
            if let Some(to) = to {
                let (proto, port) = to.split_once('/').ok_or_else(|| {
                    ClientError::Usage(format!("explain: {to:?} is not PROTO/PORT like tcp/22 or udp/53"))
                })?;
                let _ = write!(path, "&proto={}&port={}", encode(proto), encode(port));
            }
            (client.call(Method::GET, &path, None).await?, explain_table)
        }
        ClientCommand::Bans(Some(BansCommand::Rm { addr })) => {
            (client.call(Method::DELETE, &format!("/v1/bans/{}", encode(&addr)), None).await?, |_| {
                "lifted\n".into()
            })
        }
        ClientCommand::Classes(Some(ClassesCommand::Show { name })) => {
            (client.call(Method::GET, &format!("/v1/classes/{}", encode(&name)), None).await?, class_table)
        }
        ClientCommand::Watch { .. }
        | ClientCommand::Capture(_)
        | ClientCommand::Events { follow: true, .. } => {
            unreachable!("run by run_live")
        }
        ClientCommand::Events { n, follow: false } => {
            (client.call(Method::GET, &format!("/v1/events?n={n}"), None).await?, events_text)
        }
        ClientCommand::Sets(None) => (client.call(Method::GET, "/v1/sets", None).await?, sets_table),
        ClientCommand::Sets(Some(SetsCommand::Load { name, file })) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Usage(format!("reading {}: {e}", file.display())))?;
            // Every line, comments too, so that the refused lines are
            // numbered as in the file.
            let body = serde_json::json!({ "prefixes": text.lines().collect::<Vec<_>>() });
            (
                client.call(Method::PUT, &format!("/v1/sets/{}", encode(&name)), Some(&body)).await?,
                set_load_text,
            )
        }
        ClientCommand::Sets(Some(SetsCommand::Rm { name })) => {
            (client.call(Method::DELETE, &format!("/v1/sets/{}", encode(&name)), None).await?, |_| {
                "removed\n".into()
            })
        }
        ClientCommand::Rules(RulesCommand::List) => {
            (client.call(Method::GET, "/v1/rules", None).await?, rules_table)
        }
        ClientCommand::Rules(RulesCommand::Add(rule)) => {
            let body = rule.body()?;
            (client.call(Method::POST, "/v1/rules", Some(&body)).await?, added_text)
        }
        ClientCommand::Rules(RulesCommand::Rm { id }) => {
            (client.call(Method::DELETE, &format!("/v1/rules/{}", encode(&id)), None).await?, |_| {
                "removed\n".into()
            })
        }
        ClientCommand::Top { n, by } => {
            let path = format!("/v1/sources?top={n}&by={}", encode(&by));
            (client.call(Method::GET, &path, None).await?, sources_table)
        }
        ClientCommand::Source { addr, reset: false } => {
            (client.call(Method::GET, &format!("/v1/sources/{}", encode(&addr)), None).await?, source_table)
        }
        ClientCommand::Source { addr, reset: true } => {
            (client.call(Method::DELETE, &format!("/v1/sources/{}", encode(&addr)), None).await?, |_| {
                "reset\n".into()
            })
        }
        ClientCommand::Controller(None) => {
            (client.call(Method::GET, "/v1/controller", None).await?, controller_table)
        }
        ClientCommand::Controller(Some(ControllerCommand::Set(set))) => {
            let body = serde_json::to_value(&set).expect("parameters serialise");
            (client.call(Method::PUT, "/v1/controller", Some(&body)).await?, controller_table)
        }
    };
    Ok(if args.json {
        if value.is_null() {
            String::new()
        } else {
            format!("{}\n", serde_json::to_string_pretty(&value).expect("JSON serialises"))
        }
    } else {
        table(&value)
    })
}

/// Percent-encodes a path segment or query value (addresses carry `:`).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn limits_patch(patch: &LimitsPatch) -> Result<Value, ClientError> {
    if patch.is_empty() {
        return Err(ClientError::Usage(
            "limits set: give at least one of --rate, --burst, --unit, ... (see --help)".into(),
        ));
    }
    Ok(serde_json::to_value(patch).expect("a patch serialises"))
}

/// A value as a table cell: strings bare, null as `-`.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            n.as_f64().filter(|f| f.fract() != 0.0).map_or_else(|| n.to_string(), |f| format!("{f:.3}"))
        }
        other => other.to_string(),
    }
}

/// Aligned columns with a header row.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// `key  value` lines.
fn pairs(value: &Value, keys: &[&str]) -> String {
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for key in keys {
        let _ = writeln!(out, "{key:<width$}  {}", cell(&value[*key]));
    }
    out
}

fn status_table(v: &Value) -> String {
    let mut out = pairs(
        v,
        &[
            "version",
            "ready",
            "uptime_seconds",
            "config_version",
            "sources_tracked",
            "max_sources",
            "rules",
            "dry_run",
            "scale",
        ],
    );
    let rows: Vec<Vec<String>> = v["interfaces"]
        .as_array()
        .map(|a| a.iter().map(|i| vec![cell(&i["name"]), cell(&i["mode"]), cell(&i["state"])]).collect())
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["INTERFACE", "XDP MODE", "STATE"], &rows));
    if v["fleet"].is_object() {
        out.push('\n');
        let fleet = &v["fleet"];
        let row = vec![cell(&fleet["node"]), cell(&fleet["policy_version"]), cell(&fleet["state"])];
        out.push_str(&table(&["FLEET NODE", "POLICY VERSION", "STATE"], &[row]));
    }
    if v["chain"].is_object() {
        out.push('\n');
        let chain = &v["chain"];
        let row = vec![cell(&chain["name"]), cell(&chain["id"]), cell(&chain["path"])];
        out.push_str(&table(&["PASSED PACKETS CONTINUE INTO", "PROGRAM ID", "PINNED AT"], &[row]));
    }
    out
}

fn limits_table(v: &Value) -> String {
    pairs(
        v,
        &[
            "rate",
            "burst",
            "unit",
            "ipv4_prefix",
            "ipv6_prefix",
            "dry_run",
            "new_source_rate",
            "new_source_burst",
        ],
    )
}

/// The API's JSON as it came, for an answer this client cannot read.
fn as_json(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).expect("JSON serialises"))
}

/// A limit as people write it: `3/minute burst 5` (the burst filled in).
fn limit_cell(limit: &ClassLimit) -> String {
    format!("{} burst {}", limit.rate, limit.burst())
}

/// What a class shows in each column: name, matches, limits, tiers, ban,
/// adaptive.
fn class_cells(class: &Class) -> Vec<String> {
    let or_dash =
        |cells: Vec<String>, sep: &str| if cells.is_empty() { "-".to_owned() } else { cells.join(sep) };
    let matches = class
        .matches
        .iter()
        .map(|m| {
            let ports: Vec<String> = m.ports.0.iter().map(ToString::to_string).collect();
            format!("{}/{}{}", m.proto.name(), ports.join(","), if m.syn_only { " syn" } else { "" })
        })
        .collect();
    let tiers = class
        .tiers
        .iter()
        .map(|t| {
            let prefixes: Vec<String> = [("v4", t.ipv4_prefix), ("v6", t.ipv6_prefix)]
                .into_iter()
                .filter_map(|(family, len)| len.map(|len| format!("{family}/{len}")))
                .collect();
            format!("{} {}", prefixes.join(" "), limit_cell(&t.limit()))
        })
        .collect();
    let ban = class.ban.map_or_else(
        || "-".to_owned(),
        |b| {
            format!(
                "{} after {}",
                humantime::format_duration(b.duration.0),
                humantime::format_duration(b.after.0)
            )
        },
    );
    vec![
        class.name.to_string(),
        or_dash(matches, "; "),
        or_dash(class.limits.iter().map(limit_cell).collect(), ", "),
        or_dash(tiers, ", "),
        ban,
        if class.adaptive { "yes" } else { "no" }.to_owned(),
    ]
}

/// The column names of [`class_cells`].
const CLASS_COLUMNS: [&str; 6] = ["NAME", "MATCH", "LIMITS", "TIERS", "BAN", "ADAPTIVE"];

fn classes_table(v: &Value) -> String {
    match serde_json::from_value::<ClassList>(v.clone()) {
        Ok(list) => table(&CLASS_COLUMNS, &list.classes.iter().map(class_cells).collect::<Vec<_>>()),
        Err(_) => as_json(v),
    }
}

fn class_table(v: &Value) -> String {
    let Ok(class) = serde_json::from_value::<Class>(v.clone()) else {
        return as_json(v);
    };
    let mut fields: Vec<(String, String)> =
        CLASS_COLUMNS.iter().map(|c| c.to_ascii_lowercase()).zip(class_cells(&class)).collect();
    fields.extend([
        ("unit".to_owned(), class.unit.name().to_owned()),
        ("ipv4_prefix".to_owned(), class.ipv4_prefix.to_string()),
        ("ipv6_prefix".to_owned(), class.ipv6_prefix.to_string()),
    ]);
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields.iter().fold(String::new(), |mut out, (key, value)| {
        let _ = writeln!(out, "{key:<width$}  {value}");
        out
    })
}

fn explain_table(v: &Value) -> String {
    let mut out = String::new();
    let class = v["class"].as_str().unwrap_or("(none: not metered)");
    let _ = writeln!(out, "source   {}", cell(&v["source"]));
    let _ = writeln!(out, "class    {class}");
    if v["rule"].is_object() {
        let r = &v["rule"];
        let _ = writeln!(out, "rule     {} {} {}", cell(&r["id"]), rule_target(r), cell(&r["action"]));
    }
    if let Some(set) = v["set"].as_str() {
        let _ = writeln!(out, "set      {set} holds the source");
    }
    let rows: Vec<Vec<String>> = v["limits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    ["limit", "bucket", "rate", "burst", "tokens", "wait_ms", "verdict"]
                        .iter()
                        .map(|&k| if k == "rate" { rate_text(&l[k]) } else { cell(&l[k]) })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    if !rows.is_empty() {
        out.push_str(&table(&["LIMIT", "BUCKET", "RATE", "BURST", "TOKENS", "WAIT MS", "VERDICT"], &rows));
    }
    let retry = v["retry_after_ms"].as_u64().map(|ms| format!(", retry after {ms} ms")).unwrap_or_default();
    let _ = writeln!(out, "verdict  {}{retry}", cell(&v["verdict"]));
    out
}

/// A rule's prefix, or its set as `@name`.
fn rule_target(rule: &Value) -> String {
    rule["cidr"].as_str().map_or_else(|| format!("@{}", cell(&rule["set"])), str::to_owned)
}

/// A rate as people write it: the API's bare number is per second.
fn rate_text(rate: &Value) -> String {
    if rate.is_number() {
        format!("{}/second", cell(rate))
    } else {
        cell(rate)
    }
}

fn bans_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["bans"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let secs = b["remaining_ms"].as_u64().map_or_else(
                        || cell(&b["remaining_ms"]),
                        |ms| format!("{:.1} s", Duration::from_millis(ms).as_secs_f64()),
                    );
                    vec![cell(&b["source"]), cell(&b["class"]), secs]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no source is banned\n".to_owned();
    }
    table(&["SOURCE", "CLASS", "REMAINING"], &rows)
}

/// One event on one line: its time, its kind and what it names.
fn event_line(e: &Value) -> String {
    let at = e["at_ms"].as_u64().map_or_else(
        || "-".to_owned(),
        |ms| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    );
    let mut line = format!("{at} {}", e["kind"].as_str().unwrap_or("?"));
    for key in ["source", "class", "limit", "rule", "by"] {
        if !e[key].is_null() {
            let _ = write!(line, " {key}={}", cell(&e[key]));
        }
    }
    if let Some(detail) = e["detail"].as_str() {
        let _ = write!(line, " {detail:?}");
    }
    line.push('\n');
    line
}

fn events_text(v: &Value) -> String {
    let mut text: String = v["events"].as_array().into_iter().flatten().map(event_line).collect();
    let d = &v["data_path"];
    let _ = writeln!(
        text,
        "data path: {} events sent, {} held back by its budget, {} lost to a full ring",
        cell(&d["sent"]),
        cell(&d["suppressed"]),
        cell(&d["lost"])
    );
    text
}

fn sets_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["sets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        cell(&s["name"]),
                        cell(&s["prefixes"]),
                        cell(&s["ipv4"]),
                        cell(&s["ipv6"]),
                        cell(&s["refused"]),
                        cell(&s["rule"]),
                        s["file"].as_str().unwrap_or("(api)").to_owned(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut text = table(&["NAME", "PREFIXES", "IPV4", "IPV6", "REFUSED", "RULE", "SOURCE"], &rows);
    let _ = writeln!(
        text,
        "kernel memory: {} bytes ({} per prefix)",
        cell(&v["memory_bytes"]),
        cell(&v["bytes_per_prefix"])
    );
    text
}

fn set_load_text(v: &Value) -> String {
    let mut text = format!(
        "{} set {}: {} prefixes loaded, {} refused ({} ms)\n",
        if v["created"].as_bool() == Some(true) { "created" } else { "replaced" },
        cell(&v["name"]),
        cell(&v["loaded"]),
        cell(&v["refused"]),
        cell(&v["load_ms"]),
    );
    for refused in v["first_refused"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "  line {}: {}: {}",
            cell(&refused["line"]),
            cell(&refused["text"]),
            cell(&refused["reason"])
        );
    }
    text
}

fn rules_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    vec![
                        cell(&r["id"]),
                        rule_target(r),
                        cell(&r["action"]),
                        cell(&r["rate"]),
                        cell(&r["burst"]),
                        cell(&r["unit"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ID", "CIDR|@SET", "ACTION", "RATE", "BURST", "UNIT"], &rows)
}

fn sources_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["sources"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| vec![cell(&s["source"]), cell(&s["rule"]), cell(&s["passed"]), cell(&s["dropped"])])
                .collect()
        })
        .unwrap_or_default();
    table(&["SOURCE", "RULE", "PASSED", "DROPPED"], &rows)
}

fn source_table(v: &Value) -> String {
    pairs(v, &["source", "rule", "passed", "dropped"])
}

fn controller_table(v: &Value) -> String {
    let mut out = pairs(
        v,
        &[
            "enabled",
            "mode",
            "algorithm",
            "state",
            "reason",
            "scale",
            "floor",
            "capacity_per_s",
            "baseline_ms",
        ],
    );
    let latency = &v["latency"];
    if latency.is_object() {
        let _ = writeln!(
            out,
            "latency ms     p50 {}  p90 {}  p99 {}",
            cell(&latency["p50"]),
            cell(&latency["p90"]),
            cell(&latency["p99"])
        );
    }
    let rates: Vec<Vec<String>> = v["rates"]
        .as_array()
        .map(|a| {
            a.iter().map(|r| vec![cell(&r["limit"]), cell(&r["configured"]), cell(&r["effective"])]).collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["LIMIT", "CONFIGURED", "EFFECTIVE"], &rates));
    let levels: Vec<Vec<String>> = v["levels"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    vec![
                        cell(&l["limit"]),
                        cell(&l["configured_per_s"]),
                        cell(&l["level_per_s"]),
                        cell(&l["sources"]),
                        cell(&l["over_level"]),
                        cell(&l["newcomer_level_per_s"]),
                        cell(&l["newcomers"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !levels.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["LIMIT", "CONFIGURED/S", "LEVEL/S", "SOURCES", "OVER LEVEL", "NEWCOMERS/S", "NEWCOMERS"],
            &levels,
        ));
    }
    let decisions: Vec<Vec<String>> = v["decisions"]
        .as_array()
        .map(|a| {
            a.iter()
                .rev()
                .take(10)
                .map(|d| vec![cell(&d["at_ms"]), cell(&d["from"]), cell(&d["to"]), cell(&d["reason"])])
                .collect()
        })
        .unwrap_or_default();
    if !decisions.is_empty() {
        out.push('\n');
        out.push_str(&table(&["AT_MS", "FROM", "TO", "REASON"], &decisions));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_file_of_rules_is_read_a_line_a_rule_or_as_a_json_list() {
        let text = "# blocklist\n203.0.113.0/24 deny\n\n2001:db8::/32 limit --rate 100/minute --burst 5  # v6\n@feed deny\n";
        assert_eq!(
            rules_of_file(text).unwrap(),
            json!([
                {"cidr": "203.0.113.0/24", "action": "deny"},
                {"cidr": "2001:db8::/32", "action": "limit", "rate": "100/minute", "burst": 5},
                {"set": "feed", "action": "deny"},
            ])
        );
        let list = r#"[{"cidr": "10.0.0.0/8", "action": "deny"}]"#;
        assert_eq!(rules_of_file(list).unwrap(), json!([{"cidr": "10.0.0.0/8", "action": "deny"}]));
        let err = rules_of_file("10.0.0.0/8 deny\n10.1.0.0/16 drop\n").unwrap_err();
        assert!(err.starts_with("line 2: ") && err.contains("drop"), "{err}");
        let err = rules_of_file("010.0.0.0/8 deny\n").unwrap_err();
        assert!(err.starts_with("line 1: ") && err.contains("leading zero"), "{err}");
        assert_eq!(rules_of_file("# nothing\n").unwrap_err(), "no rule in the file");
        assert!(rules_of_file("10.0.0.0/8\n").unwrap_err().starts_with("line 1: "));
    }

    #[test]
    fn the_status_names_the_fleet_policy_version_in_a_fleet_only() {
        let alone = json!({"version": "0.1.0", "interfaces": [{"name": "eth0", "mode": "native"}]});
        assert!(!status_table(&alone).contains("FLEET"));
        let mut fleet = alone;
        fleet["fleet"] = json!({"node": "web-3", "policy_version": 12, "state": "synced"});
        let text = status_table(&fleet);
        assert!(
            text.ends_with("FLEET NODE  POLICY VERSION  STATE\nweb-3       12              synced\n"),
            "{text}"
        );
    }

    #[test]
    fn tables_align_and_show_missing_values_as_dashes() {
        let text = rules_table(&json!({"rules": [
            {"id": 1, "cidr": "10.0.0.0/8", "action": "deny"},
            {"id": 12, "cidr": "2001:db8::/32", "action": "limit", "rate": 100, "burst": 50},
        ]}));
        assert_eq!(
            text,
            "ID  CIDR|@SET      ACTION  RATE  BURST  UNIT\n\
             1   10.0.0.0/8     deny    -     -      -\n\
             12  2001:db8::/32  limit   100   50     -\n"
        );
    }

    fn example() -> Value {
        json!({"classes": [
            {
                "name": "ssh",
                "match": [{"proto": "tcp", "ports": ["22"], "syn_only": true}],
                "limits": [{"rate": "3/minute", "burst": 5}],
                "ban": {"after": "30s", "duration": "15m"},
                "adaptive": false, "unit": "packets", "ipv4_prefix": 32, "ipv6_prefix": 64,
            },
            {
                "name": "dns",
                "match": [{"proto": "udp", "ports": ["53"], "syn_only": false}],
                "limits": [{"rate": 50, "burst": 100}, {"rate": "1000/minute"}],
                "adaptive": false, "unit": "packets", "ipv4_prefix": 32, "ipv6_prefix": 64,
            },
            {
                "name": "web",
                "match": [{"proto": "tcp", "ports": ["443", "8000-8100"], "syn_only": true}],
                "limits": [{"rate": 20, "burst": 40}],
                "tiers": [{"ipv4_prefix": 24, "ipv6_prefix": 48, "rate": 200, "burst": 400}],
                "adaptive": true, "unit": "packets", "ipv4_prefix": 32, "ipv6_prefix": 64,
            },
        ]})
    }

    #[test]
    fn the_classes_table_prints_rates_as_people_write_them() {
        assert_eq!(
            classes_table(&example()),
            "NAME  MATCH                  LIMITS                                       TIERS                             BAN            ADAPTIVE\n\
             ssh   tcp/22 syn             3/minute burst 5                             -                                 15m after 30s  no\n\
             dns   udp/53                 50/second burst 100, 1000/minute burst 1000  -                                 -              no\n\
             web   tcp/443,8000-8100 syn  20/second burst 40                           v4/24 v6/48 200/second burst 400  -              yes\n"
        );
        assert_eq!(classes_table(&json!({"classes": []})), "NAME  MATCH  LIMITS  TIERS  BAN  ADAPTIVE\n");
    }

    #[test]
    fn one_class_shows_every_field() {
        assert_eq!(
            class_table(&example()["classes"][0]),
            "name         ssh\n\
             match        tcp/22 syn\n\
             limits       3/minute burst 5\n\
             tiers        -\n\
             ban          15m after 30s\n\
             adaptive     no\n\
             unit         packets\n\
             ipv4_prefix  32\n\
             ipv6_prefix  64\n"
        );
        // An answer this client cannot read is shown as it came.
        assert_eq!(class_table(&json!({"name": 5})), "{\n  \"name\": 5\n}\n");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("2001:db8::1"), "2001%3Adb8%3A%3A1");
        assert_eq!(encode("10.0.0.1"), "10.0.0.1");
        assert_eq!(encode("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn an_empty_limits_set_is_a_usage_error() {
        assert_eq!(limits_patch(&LimitsPatch::default()).unwrap_err().exit_code(), EXIT_USAGE);
        assert_eq!(
            limits_patch(&LimitsPatch { rate: Some(Rate::per_second(5)), ..LimitsPatch::default() }).unwrap(),
            json!({"rate": 5})
        );
    }
}
