//! Seeing what the balancer does: logs (`LOG_LEVEL` with the original's logrus level names,
//! `--log-format text|json`, key/value fields), the optional access log (`--access-log`, one line
//! per call under the target `fnlb::access`), Zipkin tracing ([`trace`], [`zipkin`]) and the
//! [`Observers`] the proxy reports each call to ([`call`]). Nothing here may slow or fail a call.
pub mod call;
pub mod trace;
pub mod zipkin;

use std::sync::Arc;

use tracing_subscriber::EnvFilter;

use crate::stats::Stats;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-02T03:04:05.678Z  INFO fnlb::app: fnlb ready traffic=... mgmt=...`
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

impl LogFormat {
    pub(crate) fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Maps a logrus level name to a tracing level; unknown names fall back to info.
pub(crate) fn level_from_logrus(name: &str) -> &'static str {
    match name.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => "info",
    }
}

/// The filter: fnlb at `LOG_LEVEL`, libraries only when something is wrong (sqlx would log every
/// query at info), and the access log whenever it is on, whatever the level.
pub(crate) fn filter(level: &str, access_log: bool) -> String {
    let mut f = format!("warn,fnlb={level}");
    f.push_str(if access_log { ",fnlb::access=info" } else { ",fnlb::access=off" });
    f
}

pub(crate) fn init_logging(format: LogFormat, access_log: bool) {
    let level = level_from_logrus(&std::env::var("LOG_LEVEL").unwrap_or_default());
    let filter = EnvFilter::new(filter(level, access_log));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// Whom the proxy tells about each call, and what the management API reads back.
pub(crate) struct Observers {
    pub stats: Arc<Stats>,
    /// `None` without `-zipkin`: tracing then costs a branch per call.
    pub tracer: Option<zipkin::Tracer>,
    pub access_log: bool,
}

impl Default for Observers {
    fn default() -> Self {
        Observers { stats: Arc::new(Stats::new()), tracer: None, access_log: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logrus_level_names_map_to_tracing_levels() {
        assert_eq!(level_from_logrus("debug"), "debug");
        assert_eq!(level_from_logrus("WARNING"), "warn");
        assert_eq!(level_from_logrus("fatal"), "error");
        assert_eq!(level_from_logrus(""), "info");
    }

    #[test]
    fn the_access_log_ignores_the_level() {
        assert_eq!(filter("error", true), "warn,fnlb=error,fnlb::access=info");
        assert_eq!(filter("debug", false), "warn,fnlb=debug,fnlb::access=off");
    }
}
