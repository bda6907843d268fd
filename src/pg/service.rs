//! libpq connection service files (`service=NAME` or `PGSERVICE`): `PGSERVICEFILE` or
//! `~/.pg_service.conf` first, then `PGSYSCONFDIR/pg_service.conf` (`parseServiceInfo` in libpq's
//! `fe-connect.c`). A service's settings fill what the connection string left unset, before the
//! environment variables do.
use std::path::{Path, PathBuf};

use super::error::PgError;

/// Where `pg_service.conf` is without `PGSYSCONFDIR`: Debian's libpq is built with this one.
const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The `key=value` settings of service `name`, in file order.
pub fn lookup(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Vec<(String, String)>, PgError> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let user_file = match var("PGSERVICEFILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => {
            var("HOME").map(PathBuf::from).or_else(|| home.map(Path::to_path_buf)).map(|h| h.join(".pg_service.conf"))
        }
    };
    let system_file =
        Path::new(&var("PGSYSCONFDIR").unwrap_or_else(|| DEFAULT_SYSCONFDIR.into())).join("pg_service.conf");
    for file in user_file.iter().chain(std::iter::once(&system_file)) {
        let text = match std::fs::read(file) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PgError::Config(format!("could not read service file \"{}\": {e}", file.display()))),
        };
        if let Some(settings) = section(&text, name, file)? {
            return Ok(settings);
        }
    }
    Err(PgError::Config(format!(
        "definition of service \"{name}\" not found (looked in {}{})",
        user_file.map(|f| format!("\"{}\" and ", f.display())).unwrap_or_default(),
        format_args!("\"{}\"", system_file.display())
    )))
}

/// The settings of `[name]` in a service file's text, `None` when it has no such section.
pub fn section(text: &str, name: &str, file: &Path) -> Result<Option<Vec<(String, String)>>, PgError> {
    let mut found: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if found.is_some() && inside {
                break;
            }
            inside = rest.strip_suffix(']') == Some(name);
            if inside {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(PgError::Config(format!(
                "syntax error in service file \"{}\", line {}",
                file.display(),
                i + 1
            )));
        };
        let k = k.trim();
        if k == "service" {
            return Err(PgError::Config(format!(
                "nested \"service\" specifications not supported in service file \"{}\", line {}",
                file.display(),
                i + 1
            )));
        }
        if let Some(s) = found.as_mut() {
            s.push((k.to_owned(), v.trim().to_owned()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# comment\n[other]\nhost=nowhere\n\n[app]\nhost = db.internal\nport=6543\n  dbname=app db\n[last]\nuser=x\n";

    #[test]
    fn a_section_s_settings_in_order() {
        let s = section(FILE, "app", Path::new("f")).unwrap().unwrap();
        assert_eq!(
            s,
            vec![
                ("host".into(), "db.internal".into()),
                ("port".into(), "6543".into()),
                ("dbname".into(), "app db".into())
            ]
        );
        assert!(section(FILE, "missing", Path::new("f")).unwrap().is_none());
        assert!(section("[a]\nnot a setting\n", "a", Path::new("f")).unwrap_err().to_string().contains("line 2"));
        assert!(section("[a]\nservice=b\n", "a", Path::new("f")).unwrap_err().to_string().contains("nested"));
    }

    #[test]
    fn user_file_first_then_the_system_one() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("user.conf");
        std::fs::write(&user, "[a]\nhost=from-user\n").unwrap();
        std::fs::write(d.path().join("pg_service.conf"), "[a]\nhost=from-system\n[b]\nhost=b-system\n").unwrap();
        let (u, sys) = (user.display().to_string(), d.path().display().to_string());
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some(u.clone()),
            "PGSYSCONFDIR" => Some(sys.clone()),
            _ => None,
        };
        assert_eq!(lookup("a", &env, None).unwrap()[0].1, "from-user");
        assert_eq!(lookup("b", &env, None).unwrap()[0].1, "b-system");
        let e = lookup("c", &env, None).unwrap_err().to_string();
        assert!(e.contains("definition of service \"c\" not found") && e.contains("user.conf"), "{e}");
    }
}
