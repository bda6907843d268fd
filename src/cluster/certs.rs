//! A CA and a server certificate for TLS clusters, made with the openssl command.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::os::*;
use super::{Cluster, ClusterError};

/// The openssl configuration: the CA's and the server certificate's extensions (the server's names
/// are localhost and 127.0.0.1, what the tests connect to).
const OPENSSL_CNF: &str = "[req]\n\
                           distinguished_name = dn\n\
                           prompt = no\n\
                           [dn]\n\
                           CN = walwitness test\n\
                           [v3_ca]\n\
                           basicConstraints = critical, CA:TRUE\n\
                           keyUsage = critical, keyCertSign, cRLSign\n\
                           subjectKeyIdentifier = hash\n\
                           [v3_server]\n\
                           basicConstraints = critical, CA:FALSE\n\
                           keyUsage = critical, digitalSignature, keyEncipherment\n\
                           extendedKeyUsage = serverAuth\n\
                           subjectAltName = DNS:localhost, IP:127.0.0.1\n\
                           subjectKeyIdentifier = hash\n\
                           authorityKeyIdentifier = keyid\n";

impl Cluster {
    /// Generate a CA and a server certificate with the openssl CLI. The CA and
    /// work files live in `<tmp>/tls`; the server cert and key are copied into the
    /// data dir (mode 0600, owned by the server user). Returns the CA path.
    pub(super) fn make_certificates(&self) -> Result<PathBuf, ClusterError> {
        let tls_dir = self.dir.path().join("tls");
        fs::create_dir(&tls_dir).map_err(|e| ClusterError::io("creating tls dir", e))?;
        let cnf = tls_dir.join("openssl.cnf");
        fs::write(&cnf, OPENSSL_CNF).map_err(|e| ClusterError::io("writing openssl.cnf", e))?;
        issue(&tls_dir, &cnf)?;
        for name in ["server.crt", "server.key"] {
            let dest = self.data_dir.join(name);
            fs::copy(tls_dir.join(name), &dest)
                .map_err(|e| ClusterError::io(format!("copying {name} into the data dir"), e))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o600))
                .map_err(|e| ClusterError::io(format!("chmod {name}"), e))?;
            if let Some((uid, gid)) = self.server_user {
                std::os::unix::fs::chown(&dest, Some(uid), Some(gid))
                    .map_err(|e| ClusterError::io(format!("chown {name}"), e))?;
            }
        }
        Ok(tls_dir.join("ca.crt"))
    }
}

/// Makes `ca.crt`/`ca.key` (self-signed) and `server.crt`/`server.key` (signed by that CA) in
/// `tls_dir`, with the configuration `cnf`.
fn issue(tls_dir: &Path, cnf: &Path) -> Result<(), ClusterError> {
    let openssl = |args: &[&str]| openssl(tls_dir, cnf, args);
    let cnf_s = cnf.to_string_lossy().into_owned();
    let cnf_s = cnf_s.as_str();
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    // Self-signed CA.
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-config", cnf_s];
    args.extend(key);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-extensions",
        "v3_ca",
        "-subj",
        "/CN=walwitness test CA",
    ]);
    openssl(&args)?;
    // Server key + CSR.
    let mut args = vec!["req", "-new", "-nodes", "-config", cnf_s];
    args.extend(key);
    args.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(&args)?;
    // Sign it.
    let serial = format!(
        "0x{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1)
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-out",
        "server.crt",
        "-days",
        "3650",
        "-extfile",
        cnf_s,
        "-extensions",
        "v3_server",
    ])
}

/// Runs `openssl args…` in `tls_dir` with the configuration `cnf`.
fn openssl(tls_dir: &Path, cnf: &Path, args: &[&str]) -> Result<(), ClusterError> {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(tls_dir).env("OPENSSL_CONF", cnf).stdin(Stdio::null());
    let out = cmd.output().map_err(|e| ClusterError::io("running openssl", e))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: format!("openssl {}", args.first().copied().unwrap_or("")),
            status: out.status.to_string(),
            detail: output_detail(&out),
        });
    }
    Ok(())
}
