//! `walwitness::pg` against a real server, below the capture: md5 and cleartext password methods,
//! pgpass, verify-ca against verify-full, sslmode fallbacks for both connection kinds, multi-host
//! fallback, and the replication connection's framing (errors leave it usable, recv is cancel-safe,
//! the copy ends and commands work again).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walwitness::cluster::{Cluster, ClusterOptions};
use walwitness::pg::config::SystemDefaults;
use walwitness::pg::{connect_sql, AuthError, ConnSpec, CopyEvent, PgError, ReplicationConnection};

/// Parsed without the machine's environment, `~/.pgpass` or `~/.postgresql`: only the DSN counts.
fn spec(dsn: &str) -> ConnSpec {
    let sys = SystemDefaults {
        os_user: Some("postgres".into()),
        home: Some("/nonexistent-walwitness-home".into()),
        socket_dir: "/nonexistent-walwitness-socket-dir".into(),
    };
    ConnSpec::parse_with(dsn, &|_| None, &sys).unwrap_or_else(|e| panic!("{e}"))
}

async fn repl(dsn: &str) -> Result<ReplicationConnection, PgError> {
    ReplicationConnection::connect(&spec(dsn), &[]).await
}

/// A CA that signed nothing of the server's, for the negative TLS cases.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "other.key"])
        .args(["-out", "other-ca.crt", "-subj", "/CN=other CA"])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("other-ca.crt")
}

struct Live {
    cluster: Cluster,
}

impl Live {
    fn socket_dsn(&self, user: &str, db: &str) -> String {
        self.cluster.socket_dsn(user, db)
    }
    fn tcp_dsn(&self, host: &str, extra: &str) -> String {
        format!("host={host} port={} dbname=postgres {extra}", self.cluster.port())
    }
    fn port(&self) -> u16 {
        self.cluster.port()
    }
    fn socket_dir(&self) -> &Path {
        self.cluster.socket_dir()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_auth_methods_tls_modes_and_the_replication_stream() {
    let opts = ClusterOptions {
        tls: true,
        password_auth: true,
        hba_first: vec!["host all md5user 127.0.0.1/32 md5".into(), "host all plainuser 127.0.0.1/32 password".into()],
        ..Default::default()
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(opts)).await.unwrap().expect("cluster");
    let c = Live { cluster };
    let ca = c.cluster.ca_cert().expect("a TLS cluster has a CA");
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let other_ca = other_ca(root);

    // SQL over the Unix socket (trust): users, table, publication.
    let sql = connect_sql(&spec(&c.socket_dsn("postgres", "postgres"))).await.unwrap();
    sql.batch_execute(
        "ALTER ROLE postgres PASSWORD 'pw';
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5pw';
         RESET password_encryption;
         CREATE ROLE plainuser LOGIN REPLICATION PASSWORD 'plain pw';
         CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 10) g;
         CREATE PUBLICATION p FOR TABLE t;",
    )
    .await
    .unwrap();

    // 1. Unix socket, trust.
    let mut r = repl(&c.socket_dsn("postgres", "postgres")).await.unwrap();
    assert!(!r.is_tls());
    assert!(r.server_version_num() >= 150000, "{}", r.server_version_num());
    assert!(r.backend_pid() > 0);
    let id = r.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(id.columns, ["systemid", "timeline", "xlogpos", "dbname"]);
    assert_eq!(id.get(0, "dbname"), Some("postgres"));
    println!("IDENTIFY_SYSTEM: {id:?}");
    // A server error leaves the connection usable.
    let e = r.simple_query("SELECT * FROM nonexistent").await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42P01"), "{e}");
    let one = r.simple_query("SELECT 1 AS a, NULL::text AS b").await.unwrap();
    assert_eq!(one.rows, vec![vec![Some("1".to_owned()), None]]);

    // 2. Replication stream: slot, START_REPLICATION, DELETE elsewhere.
    let slot = r.simple_query("CREATE_REPLICATION_SLOT s LOGICAL pgoutput (SNAPSHOT 'nothing')").await.unwrap();
    assert_eq!(slot.get(0, "slot_name"), Some("s"));
    let e = r
        .start_copy_both("START_REPLICATION SLOT nope LOGICAL 0/0 (proto_version '1', publication_names 'p')")
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"), "{e}");
    r.start_copy_both("START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '3', publication_names 'p')").await.unwrap();
    sql.execute("DELETE FROM t WHERE id <= 3", &[]).await.unwrap();
    let (mut deletes, mut frames, mut last_end) = (0, 0, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while deletes < 3 {
        // recv must survive being raced against a timer (cancel safety).
        tokio::select! {
            ev = r.recv() => match ev.unwrap() {
                CopyEvent::Data(d) => {
                    frames += 1;
                    match d.first() {
                        Some(b'w') if d.len() > 25 => {
                            last_end = u64::from_be_bytes(d[9..17].try_into().unwrap());
                            if d[25] == b'D' {
                                deletes += 1;
                            }
                        }
                        Some(b'k') if d.len() >= 18 => {
                            last_end = last_end.max(u64::from_be_bytes(d[1..9].try_into().unwrap()));
                        }
                        _ => {}
                    }
                }
                CopyEvent::Done => panic!("stream ended early"),
                CopyEvent::Notice(n) => eprintln!("server notice: {n:?}"),
                CopyEvent::Skipped(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "no DELETE seen; frames={frames}");
    }
    // Standby status update: confirm what we saw.
    let mut status = vec![b'r'];
    for _ in 0..3 {
        status.extend_from_slice(&last_end.to_be_bytes());
    }
    status.extend_from_slice(&0i64.to_be_bytes());
    status.push(0);
    r.send_copy_data(&status).await.unwrap();
    r.finish_copy().await.unwrap();
    println!("replication: {frames} frames, {deletes} deletes, end {last_end:X}");
    // After the copy the session accepts commands again.
    r.simple_query("DROP_REPLICATION_SLOT s").await.unwrap();
    r.close().await;

    // 3. Password methods over TCP without TLS.
    let mut r = repl(&c.tcp_dsn("127.0.0.1", "user=postgres password=pw sslmode=disable")).await.unwrap();
    assert!(!r.is_tls());
    r.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    repl(&c.tcp_dsn("127.0.0.1", "user=md5user password=md5pw sslmode=disable")).await.unwrap();
    repl(&c.tcp_dsn("127.0.0.1", "user=plainuser password='plain pw' sslmode=disable")).await.unwrap();
    let e = repl(&c.tcp_dsn("127.0.0.1", "user=postgres password=wrong sslmode=disable")).await.unwrap_err();
    assert!(matches!(e, PgError::Auth(AuthError::Server(_))), "{e}");
    assert_eq!(e.sqlstate(), Some("28P01"));
    assert!(!e.to_string().contains("wrong"));
    let e = repl(&c.tcp_dsn("127.0.0.1", "user=md5user password=nope sslmode=disable")).await.unwrap_err();
    assert!(matches!(e, PgError::Auth(_)), "{e}");
    let e = repl(&c.tcp_dsn("127.0.0.1", "user=postgres sslmode=disable")).await.unwrap_err();
    assert!(matches!(e, PgError::Auth(AuthError::Client(_))), "{e}");
    // pgpass supplies the password.
    let pgpass = root.join("pgpass");
    std::fs::write(&pgpass, format!("127.0.0.1:{}:*:postgres:pw\n", c.port())).unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    repl(&c.tcp_dsn("127.0.0.1", &format!("user=postgres passfile={} sslmode=disable", pgpass.display())))
        .await
        .unwrap();

    // 4. TLS.
    let r = repl(&c.tcp_dsn("127.0.0.1", "user=postgres password=pw sslmode=require")).await.unwrap();
    assert!(r.is_tls());
    let r = repl(&c.tcp_dsn("127.0.0.1", "user=postgres password=pw")).await.unwrap();
    assert!(r.is_tls(), "prefer uses TLS when offered");
    let r = repl(
        &c.tcp_dsn("localhost", &format!("user=postgres password=pw sslmode=verify-full sslrootcert={}", ca.display())),
    )
    .await
    .unwrap();
    assert!(r.is_tls());
    // The certificate names localhost and 127.0.0.1, not db.example (reached through hostaddr):
    // verify-ca passes, verify-full does not.
    let elsewhere = "db.example hostaddr=127.0.0.1";
    repl(&c.tcp_dsn(elsewhere, &format!("user=postgres password=pw sslmode=verify-ca sslrootcert={}", ca.display())))
        .await
        .unwrap();
    let e = repl(
        &c.tcp_dsn(elsewhere, &format!("user=postgres password=pw sslmode=verify-full sslrootcert={}", ca.display())),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PgError::Tls(_)), "{e}");
    println!("verify-full name mismatch: {e}");
    let e = repl(&c.tcp_dsn(
        "localhost",
        &format!("user=postgres password=pw sslmode=verify-full sslrootcert={}", other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, PgError::Tls(_)), "{e}");
    println!("verify-full wrong CA: {e}");
    // require + an existing root cert behaves as verify-ca.
    let e = repl(&c.tcp_dsn(
        "127.0.0.1",
        &format!("user=postgres password=pw sslmode=require sslrootcert={}", other_ca.display()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, PgError::Tls(_)), "{e}");
    // prefer + a failing chain falls back to plaintext, like libpq.
    let r =
        repl(&c.tcp_dsn(
            "127.0.0.1",
            &format!("user=postgres password=pw sslmode=prefer sslrootcert={}", other_ca.display()),
        ))
        .await
        .unwrap();
    assert!(!r.is_tls());
    // Wrong password over TLS (SCRAM-SHA-256-PLUS is offered there).
    let e = repl(&c.tcp_dsn("localhost", "user=postgres password=bad sslmode=require")).await.unwrap_err();
    assert!(matches!(e, PgError::Auth(_)), "{e}");

    // tokio-postgres through the same TLS settings.
    let s = connect_sql(&spec(
        &c.tcp_dsn("localhost", &format!("user=postgres password=pw sslmode=verify-full sslrootcert={}", ca.display())),
    ))
    .await
    .unwrap();
    let row = s.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
    let e = connect_sql(&spec(&c.tcp_dsn(
        "localhost",
        &format!("user=postgres password=pw sslmode=verify-full sslrootcert={}", other_ca.display()),
    )))
    .await
    .unwrap_err();
    assert!(matches!(e, PgError::Tls(_)), "{e}");
    let s = connect_sql(&spec(&c.tcp_dsn(
        "127.0.0.1",
        &format!("user=postgres password=pw sslmode=prefer sslrootcert={}", other_ca.display()),
    )))
    .await
    .unwrap();
    let row = s.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
    assert!(!row.get::<_, bool>(0), "prefer falls back to plaintext");
    let e = connect_sql(&spec(&c.tcp_dsn("127.0.0.1", "user=postgres password=bad"))).await.unwrap_err();
    assert!(matches!(e, PgError::Auth(_)), "{e}");

    // 5. Unreachable: nothing listens on a fresh port; the second host works.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = repl(&format!("host=127.0.0.1 port={dead} user=postgres password=pw sslmode=disable")).await.unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e}");
    let multi = format!(
        "host=127.0.0.1,{} port={dead},{} user=postgres password=pw dbname=postgres",
        c.socket_dir().display(),
        c.port()
    );
    let r = repl(&multi).await.unwrap();
    assert!(!r.is_tls());
}
