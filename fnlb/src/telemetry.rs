//! Logs: `LOG_LEVEL` with the original's (logrus) level names, key/value fields.
use tracing_subscriber::EnvFilter;

/// Maps a logrus level name to a tracing level; unknown names fall back to info.
pub fn level_from_logrus(name: &str) -> &'static str {
    match name.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => "info",
    }
}

pub fn init_logging() {
    let level = level_from_logrus(&std::env::var("LOG_LEVEL").unwrap_or_default());
    // Libraries speak only when something is wrong; sqlx would log every query at info.
    let filter = EnvFilter::new(format!("warn,fnlb={level}"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
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
}
