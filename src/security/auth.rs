//! Client tokens with roles.
//!
//! The auth file (`--auth-file`) holds one token a line: `NAME ROLE
//! SHA256`, where SHA256 is the lowercase hex SHA-256 of the token (the
//! token itself is never stored), ROLE is `read`, `write` or `admin`;
//! blank lines and lines starting with `#` are skipped. Clients send
//! `authorization: Bearer TOKEN`. [`AuthLayer`] checks every request on the
//! client port before it reaches a service: a missing or unknown token is
//! UNAUTHENTICATED, a role that does not cover the call PERMISSION_DENIED
//! naming both. Tokens are compared by hash in constant time and never
//! logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tonic::Status;

/// What a token may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get, MapGet, GetCounter, and Batch requests of gets only.
    Read,
    /// Also Set, Delete, MapSet, MapRemove, Increment and any Batch.
    Write,
    /// Also the Admin and Faults services.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role as the auth file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a request: put in the request's extensions by [`AuthLayer`],
/// so that a service can refine the check by the request's content (a
/// `read` token may send a Batch of gets only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name in the auth file.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// Why the auth file could not be loaded.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("auth file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// A line is malformed.
    #[error("auth file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The tokens of an auth file, re-read by [`AuthFile::reload`].
pub struct AuthFile {
    path: PathBuf,
    tokens: RwLock<Arc<Vec<Token>>>,
}

impl AuthFile {
    /// Reads the file at `path`.
    pub fn load(path: PathBuf) -> Result<Self, AuthError> {
        let tokens = parse(&path)?;
        Ok(Self {
            path,
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Re-reads the file; on an error the tokens in force stay. Returns how
    /// many tokens it now holds.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tokens = parse(&self.path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
        Ok(n)
    }

    /// The caller `token` stands for, if any. Every entry is compared, each
    /// in constant time, so the time taken says nothing of which entry or
    /// how much of a hash matched.
    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut found = None;
        for t in tokens.iter() {
            if bool::from(t.hash.ct_eq(&hash)) {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                });
            }
        }
        found
    }
}

fn parse(path: &Path) -> Result<Vec<Token>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| AuthError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = fields[..] else {
            return Err(bad(format!(
                "{} fields; a line is NAME ROLE SHA256",
                fields.len()
            )));
        };
        let role = Role::parse(role)
            .ok_or_else(|| bad(format!("role {role:?} is not one of read, write, admin")))?;
        let hash = parse_hash(hash).ok_or_else(|| {
            bad("the hash is not 64 hex digits (the SHA-256 of the token)".into())
        })?;
        tokens.push(Token {
            name: name.to_string(),
            role,
            hash,
        });
    }
    Ok(tokens)
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The lowercase hex SHA-256 of `token`: what the auth file stores.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The role a call needs, by its gRPC path (`/package.Service/Method`);
/// `None` for calls anyone may make (health checks, for load balancers).
pub fn required_role(path: &str) -> Option<Role> {
    let call = path.trim_start_matches('/');
    let (service, method) = call.split_once('/').unwrap_or((call, ""));
    match service {
        "grpc.health.v1.Health" => None,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Some(Role::Read)
        }
        "kilovolt.Kilovolt" => match method {
            // A Batch with writes is refused to `read` by the service.
            "Get" | "MapGet" | "GetCounter" | "Batch" => Some(Role::Read),
            _ => Some(Role::Write),
        },
        _ => Some(Role::Admin),
    }
}

/// The status for a caller whose role does not cover `call`.
pub fn denied(role: Role, call: &str) -> Status {
    Status::permission_denied(format!("role {role} does not allow {call}"))
}

/// A tower layer that authenticates every request of the client port
/// against an auth file (see the module documentation). Without a file it
/// lets everything through.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<AuthFile>>,
}

impl AuthLayer {
    /// Checks against `auth`, or nothing.
    pub fn new(auth: Option<Arc<AuthFile>>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<AuthFile>>,
}

impl<S> AuthService<S> {
    /// The caller of `request`, or the status that refuses it.
    fn check<B>(&self, request: &http::Request<B>) -> Result<Option<Caller>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let path = request.uri().path();
        let Some(needed) = required_role(path) else {
            return Ok(None);
        };
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(Status::unauthenticated(
                "no token: send the metadata `authorization: Bearer TOKEN`",
            ));
        };
        let caller = auth
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if caller.role < needed {
            tracing::debug!(caller = %caller.name, role = %caller.role, call = path, "refused a call");
            return Err(denied(caller.role, path.trim_start_matches('/')));
        }
        Ok(Some(caller))
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.check(&request) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(futures_util::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (AuthFile, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "kilovolt-auth-{}-{}",
            std::process::id(),
            hash_token(text)
        ));
        std::fs::write(&path, text).unwrap();
        (AuthFile::load(path.clone()).unwrap(), path)
    }

    #[test]
    fn tokens_authenticate_by_hash() {
        let text = format!(
            "# comment\n\nreader read {}\nboss admin {}\n",
            hash_token("r-secret"),
            hash_token("a-secret")
        );
        let (auth, path) = file(&text);
        assert_eq!(
            auth.authenticate("r-secret"),
            Some(Caller {
                name: "reader".into(),
                role: Role::Read
            })
        );
        assert_eq!(auth.authenticate("a-secret").unwrap().role, Role::Admin);
        assert_eq!(auth.authenticate("other"), None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_bad_line_names_its_number_and_fault() {
        let path = std::env::temp_dir().join(format!("kilovolt-auth-bad-{}", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "a read {}\nb superuser {}\n",
                hash_token("x"),
                hash_token("y")
            ),
        )
        .unwrap();
        let err = AuthFile::load(path.clone()).err().unwrap().to_string();
        assert!(err.contains("line 2") && err.contains("superuser"), "{err}");
        std::fs::write(&path, "a read abc\n").unwrap();
        let err = AuthFile::load(path.clone()).err().unwrap().to_string();
        assert!(
            err.contains("line 1") && err.contains("64 hex digits"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn roles_cover_exactly_their_calls() {
        assert_eq!(required_role("/kilovolt.Kilovolt/Get"), Some(Role::Read));
        assert_eq!(
            required_role("/kilovolt.Kilovolt/GetCounter"),
            Some(Role::Read)
        );
        assert_eq!(required_role("/kilovolt.Kilovolt/Set"), Some(Role::Write));
        assert_eq!(
            required_role("/kilovolt.Kilovolt/Increment"),
            Some(Role::Write)
        );
        assert_eq!(required_role("/kilovolt.Admin/Members"), Some(Role::Admin));
        assert_eq!(required_role("/kilovolt.Faults/Cut"), Some(Role::Admin));
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/kilovolt.cluster.v1.Peer/Apply"),
            Some(Role::Admin)
        );
    }
}
