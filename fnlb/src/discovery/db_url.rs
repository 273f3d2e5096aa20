//! The node store's address, `-db`: SQLite, PostgreSQL, MySQL (also in the Go driver's DSN form)
//! or Kubernetes, parsed once and shown only with its password hidden.
use std::fmt;
use std::path::PathBuf;

use crate::config::parse::InvalidValue;

/// The node store `-db` names.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    SqliteMemory,
    /// An absolute path.
    SqliteFile(PathBuf),
    /// The URL as given (`postgres://` or `postgresql://`), for sqlx.
    Postgres(String),
    /// A `mysql://user:pw@host:port/db?params` URL for sqlx; the Go driver's
    /// `user:pw@tcp(host:port)/db` form is converted to it.
    Mysql(String),
    K8s,
}

impl DbUrl {
    /// Parses a `-db` value.
    pub fn parse(s: &str) -> Result<DbUrl, InvalidValue> {
        if s == "k8s" {
            return Ok(DbUrl::K8s);
        }
        const EXPECTED: &str = "expected sqlite3://, postgres://, mysql:// or k8s";
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("not a URL: {EXPECTED}").into());
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite3" | "sqlite" => parse_sqlite(rest),
            "postgres" | "postgresql" => parse_postgres(s),
            "mysql" => parse_mysql(s, rest),
            _ => Err(format!("unknown scheme {scheme:?}: {EXPECTED}").into()),
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    /// The password in the URL's user info, as written there (percent-encoded if it was), so
    /// that driver errors echoing it can be scrubbed.
    pub fn password(&self) -> Option<&str> {
        match self {
            DbUrl::Postgres(url) | DbUrl::Mysql(url) => url_password(url).map(|r| &url[r]),
            _ => None,
        }
    }
}

fn parse_sqlite(rest: &str) -> Result<DbUrl, InvalidValue> {
    if rest == ":memory:" {
        return Ok(DbUrl::SqliteMemory);
    }
    if rest.is_empty() {
        return Err("missing path: expected sqlite3://:memory: or sqlite3:///abs/path.db".into());
    }
    if rest.contains('?') {
        return Err("query parameters are not supported for sqlite".into());
    }
    if !rest.starts_with('/') {
        return Err("the sqlite path must be absolute: sqlite3:///abs/path.db".into());
    }
    Ok(DbUrl::SqliteFile(PathBuf::from(rest)))
}

fn parse_postgres(s: &str) -> Result<DbUrl, InvalidValue> {
    let url = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    // libpq allows the host in a parameter (`postgres:///db?host=/run/postgresql`).
    let host_param = url.query_pairs().any(|(k, v)| k == "host" && !v.is_empty());
    if url.host_str().is_none_or(str::is_empty) && !host_param {
        return Err("missing host: expected postgres://user:pw@host:5432/db".into());
    }
    Ok(DbUrl::Postgres(s.to_owned()))
}

/// Nets of the Go MySQL driver's DSN, `[user[:pw]@][net[(addr)]]/db[?params]`, as they follow
/// the `@` (or open the DSN).
const GO_MYSQL_NETS: &[&str] = &["tcp(", "tcp4(", "tcp6(", "unix(", "tcp/", "/"];

/// Unlike Postgres, MySQL has no default database, and the node table must live in one.
const MYSQL_NO_DB: &str = "missing database name: expected mysql://user:pw@host:3306/db";

fn parse_mysql(s: &str, rest: &str) -> Result<DbUrl, InvalidValue> {
    let go_form = rest
        .rmatch_indices('@')
        .map(|(at, _)| at + 1)
        .chain([0])
        .find(|&start| GO_MYSQL_NETS.iter().any(|n| rest[start..].starts_with(n)));
    match go_form {
        Some(start) => go_mysql_to_url(rest, start),
        None => {
            let url = url::Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err("missing host: expected mysql://user:pw@host:3306/db".into());
            }
            if url.path().trim_start_matches('/').is_empty() {
                return Err(MYSQL_NO_DB.into());
            }
            Ok(DbUrl::Mysql(s.to_owned()))
        }
    }
}

/// Converts the Go driver's DSN (after `mysql://`) to a URL; `net_at` is where the net begins.
fn go_mysql_to_url(dsn: &str, net_at: usize) -> Result<DbUrl, InvalidValue> {
    let userinfo = dsn[..net_at].strip_suffix('@').unwrap_or("");
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    let net_part = &dsn[net_at..];
    let (net, addr, after) = match net_part.split_once('(') {
        Some((net, tail)) if !net.contains('/') => {
            let (addr, after) = tail.split_once(')').ok_or("missing ')' after the address in tcp(host:port)")?;
            (net, addr, after)
        }
        _ => {
            let slash = net_part.find('/').unwrap_or(net_part.len());
            (&net_part[..slash], "", &net_part[slash..])
        }
    };
    let after = after.strip_prefix('/').ok_or("missing /dbname after the address")?;
    let (db, params) = after.split_once('?').unwrap_or((after, ""));
    if db.is_empty() {
        return Err(MYSQL_NO_DB.into());
    }

    let mut url = url::Url::parse("mysql://localhost:3306").expect("constant URL is valid");
    let mut socket = None;
    match net {
        "" | "tcp" | "tcp4" | "tcp6" => {
            if !addr.is_empty() {
                let (host, port) = split_host_port(addr, 3306)
                    .ok_or_else(|| format!("invalid address in {net}(...): expected host:port"))?;
                url.set_host(Some(host)).map_err(|e| format!("invalid host in {net}(...): {e}"))?;
                url.set_port(Some(port)).map_err(|()| "invalid port")?;
            }
        }
        "unix" => {
            if addr.is_empty() {
                return Err("missing socket path in unix(...)".into());
            }
            socket = Some(addr);
        }
        other => return Err(format!("unknown network {other:?}: expected tcp or unix").into()),
    }
    if !user.is_empty() {
        url.set_username(user).map_err(|()| "invalid user")?;
    }
    if let Some(pw) = password {
        url.set_password(Some(pw)).map_err(|()| "invalid password")?;
    }
    url.set_path(&format!("/{db}"));

    let params: Vec<(String, String)> = url::form_urlencoded::parse(params.as_bytes()).into_owned().collect();
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in &params {
            // The Go driver's `tls`; sqlx spells it `ssl-mode`.
            if key == "tls" {
                let mode = match value.as_str() {
                    "false" => "DISABLED",
                    "true" => "VERIFY_IDENTITY",
                    "skip-verify" => "REQUIRED",
                    "preferred" => "PREFERRED",
                    _ => {
                        return Err(
                            format!("unsupported tls={value:?} (use false, true, skip-verify or preferred)").into()
                        )
                    }
                };
                query.append_pair("ssl-mode", mode);
            } else {
                query.append_pair(key, value);
            }
        }
        if let Some(path) = socket {
            query.append_pair("socket", path);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(DbUrl::Mysql(url.into()))
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`, with `default_port` when none is given.
fn split_host_port(addr: &str, default_port: u16) -> Option<(&str, u16)> {
    if addr.starts_with('[') {
        let close = addr.find(']')?;
        let host = &addr[..=close];
        return match &addr[close + 1..] {
            "" => Some((host, default_port)),
            tail => Some((host, tail.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((addr, default_port)),
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::SqliteMemory => f.write_str("sqlite3://:memory:"),
            DbUrl::SqliteFile(path) => write!(f, "sqlite3://{}", path.display()),
            DbUrl::Postgres(url) | DbUrl::Mysql(url) => f.write_str(&redact_url(url)),
            DbUrl::K8s => f.write_str("k8s"),
        }
    }
}

/// Redacted, like `Display`: a `{:?}` of a `Config` must not leak the password either.
impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// Where the password of `scheme://user:pw@...` is. Works on the raw text, so it also covers
/// strings no URL parser accepts and the Go DSN form, whose password may contain `@` and `/`: it
/// takes the last `@`, erring towards hiding too much.
fn url_password(s: &str) -> Option<std::ops::Range<usize>> {
    let start = s.find("://")? + 3;
    let at = start + s[start..].rfind('@')?;
    let colon = start + s[start..at].find(':')?;
    Some(colon + 1..at)
}

/// The text with the password of a URL and any `password=` parameter replaced by `***`.
pub fn redact_url(s: &str) -> String {
    let mut out = match url_password(s) {
        Some(r) => format!("{}***{}", &s[..r.start], &s[r.end..]),
        None => s.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let redacted: Vec<String> = out[q + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_accepts_sqlite_forms() {
        assert_eq!(DbUrl::parse("sqlite3://:memory:"), Ok(DbUrl::SqliteMemory));
        assert_eq!(DbUrl::parse("sqlite://:memory:"), Ok(DbUrl::SqliteMemory));
        assert_eq!(DbUrl::parse("sqlite3:///var/lib/fnlb.db"), Ok(DbUrl::SqliteFile("/var/lib/fnlb.db".into())));
        assert_eq!(DbUrl::parse("k8s"), Ok(DbUrl::K8s));
    }

    #[test]
    fn db_rejects_relative_sqlite_paths_and_unknown_schemes() {
        for bad in [
            "sqlite3://rel.db",
            "sqlite3://",
            "sqlite3:///a.db?mode=ro",
            "foo://x",
            "K8S",
            "postgres",
            "",
            "redis://h:6379",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn db_keeps_postgres_urls_and_requires_a_host() {
        for ok in [
            "postgres://user:pw@host:5432/db?sslmode=disable",
            "postgresql://host/db",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert_eq!(DbUrl::parse(ok), Ok(DbUrl::Postgres(ok.to_owned())));
        }
        assert!(DbUrl::parse("postgres:///db").is_err());
        assert!(DbUrl::parse("postgres://u:pw@/db").is_err());
    }

    #[test]
    fn db_converts_the_go_mysql_form_to_a_url() {
        let m = |s| match DbUrl::parse(s) {
            Ok(DbUrl::Mysql(url)) => url,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(m("mysql://root:root@tcp(mysql:3306)/funcs"), "mysql://root:root@mysql:3306/funcs");
        assert_eq!(m("mysql://u:pw@tcp(db)/fn"), "mysql://u:pw@db:3306/fn");
        assert_eq!(m("mysql://u@tcp(10.0.0.1:3307)/fn"), "mysql://u@10.0.0.1:3307/fn");
        assert_eq!(m("mysql://u:pw@tcp([::1]:3306)/fn"), "mysql://u:pw@[::1]:3306/fn");
        assert_eq!(m("mysql://u:pw@/fn"), "mysql://u:pw@localhost:3306/fn");
        assert_eq!(m("mysql:///fn"), "mysql://localhost:3306/fn");
        assert_eq!(m("mysql://u:p@ss/w@rd@tcp(h:1)/fn"), "mysql://u:p%40ss%2Fw%40rd@h:1/fn");
        assert_eq!(
            m("mysql://u:pw@tcp(h:1)/fn?parseTime=true&tls=false"),
            "mysql://u:pw@h:1/fn?parseTime=true&ssl-mode=DISABLED"
        );
        assert_eq!(
            m("mysql://u:pw@unix(/run/mysqld/mysqld.sock)/fn"),
            "mysql://u:pw@localhost:3306/fn?socket=%2Frun%2Fmysqld%2Fmysqld.sock"
        );
        // The URL form is kept as given.
        assert_eq!(m("mysql://u:pw@host:3306/db"), "mysql://u:pw@host:3306/db");
    }

    #[test]
    fn db_rejects_broken_mysql_forms() {
        for bad in [
            "mysql://u:pw@tcp(h:1/db",
            "mysql://u:pw@tcp(h:1)db",
            "mysql://u:pw@udp(h:1)/db",
            "mysql://u:pw@tcp(h:x)/db",
            "mysql://u:pw@unix()/db",
            "mysql://u:pw@tcp(h)/db?tls=maybe",
            "mysql://u:pw@/",
            "mysql://u:pw@tcp(h)/?x=1",
            "mysql://u:pw@host:3306",
            "mysql://u:pw@host:3306/",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn db_display_hides_the_password() {
        let pg = DbUrl::parse("postgres://user:s3cret@host/db?sslmode=disable").unwrap();
        assert_eq!(pg.to_string(), "postgres://user:***@host/db?sslmode=disable");
        assert_eq!(pg.redacted(), pg.to_string());
        assert_eq!(pg.password(), Some("s3cret"));
        let my = DbUrl::parse("mysql://root:s3cret@tcp(mysql:3306)/funcs").unwrap();
        assert_eq!(my.redacted(), "mysql://root:***@mysql:3306/funcs");
        assert!(!format!("{my:?}").contains("s3cret"));
        assert_eq!(DbUrl::parse("postgres://u@h/db").unwrap().password(), None);
        assert_eq!(DbUrl::SqliteMemory.to_string(), "sqlite3://:memory:");
        assert_eq!(DbUrl::SqliteFile("/a.db".into()).to_string(), "sqlite3:///a.db");
    }

    #[test]
    fn redact_url_hides_passwords_in_any_form() {
        assert_eq!(redact_url("mysql://u:p@ss@tcp(h)/db"), "mysql://u:***@tcp(h)/db");
        assert_eq!(redact_url("postgres://h/db?user=u&password=x"), "postgres://h/db?user=u&password=***");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
