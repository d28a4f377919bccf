//! The TOML configuration: schema with documented defaults (`schema.rs`), semantic validation
//! (`validate.rs`; upstream groups and routes in `routing.rs`; client identity, rate limits and
//! access rules in `admission.rs`; shared checks in `check.rs`) into
//! typed settings (`settings.rs`), and error locations by file, line and key (`locate.rs`).
//! Unknown keys are errors: a typo must never be silently ignored.

mod admission;
mod check;
mod locate;
mod problem;
mod routing;
mod schema;
mod settings;
pub mod tls;
mod validate;

pub use admission::{
    parse_htpasswd, Admission, BasicAuth, IpRanges, LimitKey, LimitMode, RateLimitRule,
    StoreSettings,
};
pub use routing::{
    Forward, GroupConfig, GroupSettings, HashKey, HeaderCondition, HeaderEdits, HostHeader,
    HostPattern, PathMatch, PathRewrite, Redirect, Respond, RouteAction, RouteRule, DEFAULT_GROUP,
};
pub use schema::*;
pub use settings::{
    HealthSettings, PassiveSettings, PoolSettings, ProxyHeader, ResolvedBackend, Timeouts,
};
pub use validate::{AdminSettings, Limits, ValidConfig};

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file, located by key path and line.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `backends[0].weight`; empty when the file itself is unreadable.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads, parses and validates a config file; every error found is returned.
pub fn load(path: &Path) -> Result<ValidConfig, Vec<ConfigError>> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }]
    })?;
    parse(path, &source)
}

/// Parses and validates config text; `path` names the file in messages, and files the config
/// names (certificates) are found relative to its directory.
pub fn parse(path: &Path, source: &str) -> Result<ValidConfig, Vec<ConfigError>> {
    let raw: Config = toml::from_str(source).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = locate::line_col(source, span.start);
        let key = locate::key_at(source, span.start).unwrap_or_default();
        vec![ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let locate = |p: problem::Problem| {
        let (line, column) = locate::line_col_of_key(source, &p.key);
        let mut message = p.message;
        if let Some(related) = p.related {
            let (line, _) = locate::line_col_of_key(source, &related);
            message.push_str(&format!(" ({related} is at {}:{line})", path.display()));
        }
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key: p.key,
            message,
        }
    };
    let (mut config, warnings) = validate::validate(raw, base)
        .map_err(|problems| problems.into_iter().map(locate).collect::<Vec<_>>())?;
    config.warnings = warnings.into_iter().map(locate).collect();
    Ok(config)
}
