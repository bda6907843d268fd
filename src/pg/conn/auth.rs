//! Authentication: cleartext, MD5 and SCRAM-SHA-256 (with channel binding over TLS).

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;

use super::frame::{log_notice, Cur};
use super::{ReplicationConnection, Socket};
use crate::pg::config::{ConnSpec, Target};
use crate::pg::error::{AuthError, DbError, PgError, NO_PASSWORD};
use crate::pg::tls;

impl ReplicationConnection {
    pub(super) async fn authenticate(&mut self, spec: &ConnSpec, target: &Target) -> Result<(), PgError> {
        let password = spec.password_for(target).map(<[u8]>::to_vec);
        let need_password = |method: &str| {
            password.clone().ok_or_else(|| PgError::Auth(AuthError::Client(format!("{NO_PASSWORD} ({method})"))))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let body = self.read_auth_request().await?;
            let mut c = Cur(&body);
            let code = c.i32()?;
            self.wbuf.clear();
            match code {
                0 => {
                    if scram.is_some() {
                        return Err(PgError::Auth(AuthError::Client("server ended SCRAM authentication early".into())));
                    }
                    return Ok(());
                }
                3 => {
                    let pw = need_password("password")?;
                    frontend::password_message(&pw, &mut self.wbuf)?;
                }
                5 => {
                    let pw = need_password("md5")?;
                    let s = c.take(4)?;
                    let salt = [s[0], s[1], s[2], s[3]];
                    let hash = postgres_protocol::authentication::md5_hash(spec.user().as_bytes(), &pw, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                }
                10 => {
                    let pw = need_password("SCRAM-SHA-256")?;
                    let cb = self.channel_binding_data();
                    scram = Some(sasl_start(&mut c, &pw, cb, &mut self.wbuf)?);
                }
                11 => {
                    let s =
                        scram.as_mut().ok_or_else(|| PgError::protocol("SASLContinue without SASL authentication"))?;
                    s.update(c.rest())
                        .map_err(|e| PgError::Auth(AuthError::Client(format!("SCRAM exchange failed: {e}"))))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                }
                12 => {
                    let mut s =
                        scram.take().ok_or_else(|| PgError::protocol("SASLFinal without SASL authentication"))?;
                    s.finish(c.rest()).map_err(|e| {
                        PgError::Auth(AuthError::Client(format!("could not verify the server's SCRAM signature: {e}")))
                    })?;
                    continue;
                }
                2 | 6 | 7 | 8 | 9 => return Err(unsupported_method(code)),
                other => return Err(PgError::protocol(format!("unknown authentication request {other}"))),
            }
            self.flush_wbuf().await?;
        }
    }

    /// The body of the next AuthenticationRequest; notices and protocol negotiation are passed over.
    async fn read_auth_request(&mut self) -> Result<BytesMut, PgError> {
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => return Ok(f.body),
                b'E' => return Err(PgError::from_startup_error(DbError::parse(&f.body)?)),
                b'N' => log_notice(&f.body),
                b'v' => {}
                other => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )))
                }
            }
        }
    }

    fn channel_binding_data(&self) -> Option<Vec<u8>> {
        match &self.socket {
            Socket::Tls(s) => {
                s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::tls_server_end_point(c))
            }
            _ => None,
        }
    }
}

/// Picks a mechanism from AuthenticationSASL's list `c` and writes the SASLInitialResponse to `wbuf`.
/// `cb` is the TLS channel binding data, if the session has one.
fn sasl_start(c: &mut Cur<'_>, pw: &[u8], cb: Option<Vec<u8>>, wbuf: &mut BytesMut) -> Result<ScramSha256, PgError> {
    let mut has_scram = false;
    let mut has_plus = false;
    loop {
        let m = c.cstr()?;
        if m.is_empty() {
            break;
        }
        has_scram |= m == sasl::SCRAM_SHA_256;
        has_plus |= m == sasl::SCRAM_SHA_256_PLUS;
    }
    let (binding, mechanism) = match (has_plus, cb) {
        (true, Some(cb)) => (sasl::ChannelBinding::tls_server_end_point(cb), sasl::SCRAM_SHA_256_PLUS),
        (_, cb) if has_scram => {
            // 'y' tells the server we could have bound, so a
            // stripped PLUS offer is detected as tampering.
            let b =
                if cb.is_some() { sasl::ChannelBinding::unrequested() } else { sasl::ChannelBinding::unsupported() };
            (b, sasl::SCRAM_SHA_256)
        }
        _ => return Err(PgError::Auth(AuthError::Client("the server offered no supported SASL mechanism".into()))),
    };
    tracing::debug!(mechanism, "SASL authentication");
    let s = ScramSha256::new(pw, binding);
    frontend::sasl_initial_response(mechanism, s.message(), wbuf)?;
    Ok(s)
}

/// The refusal of an authentication method walwitness does not implement (Kerberos, GSSAPI, SSPI, ...).
fn unsupported_method(code: i32) -> PgError {
    let name = match code {
        2 => "Kerberos V5",
        6 => "SCM credentials",
        9 => "SSPI",
        _ => "GSSAPI",
    };
    PgError::Auth(AuthError::Client(format!("the server requested {name} authentication, which is not supported")))
}
