//! A throwaway PKI for the test cluster's TLS, made with the `openssl` command line.
//!
//! Every cluster gets a fresh one in `<base>/tls`, next to its data folder, deleted
//! with the cluster: no key is ever committed or shared between clusters. Files (PEM):
//!
//! - `ca.crt`, `ca.key`: the CA (ECDSA P-256, CN "aiopg test CA"); the server trusts
//!   client certificates it signed, tests trust the server's through it;
//! - `other-ca.crt`, `other-ca.key`: an unrelated CA, for "unknown CA" tests;
//! - `server.crt`, `server.key`: the certificate the server presents (ECDSA P-256);
//! - `server-rsa.crt`, `server-rsa.key`: the same with RSA 2048 (not used by default);
//! - `client.crt` with its key as `client.key` (PKCS#8) and `client-sec1.key` (SEC1):
//!   ECDSA P-256, CN [`CLIENT_CN`], which `cert` authentication maps to that role;
//! - `client-rsa.crt` with `client-rsa.key` (PKCS#8) and `client-rsa-pkcs1.key`
//!   (PKCS#1): the same with RSA 2048;
//! - `revoked.crt`, `revoked.key`: another client certificate for [`CLIENT_CN`], listed
//!   in `ca.crl`, the CA's revocation list;
//! - `openssl-work/`: openssl's bookkeeping (config, requests, CA database, serial).
//!
//! Strict verifiers (rustls/webpki) want X.509 v3 with the usual extensions, so the CA
//! has basicConstraints CA:TRUE, keyUsage keyCertSign+cRLSign and a subject key id;
//! leaves have CA:FALSE, keyUsage, extendedKeyUsage and both key ids. The server's only
//! name is `DNS:localhost` (no IP address): `sslmode=verify-full` must accept host
//! `localhost` and refuse `127.0.0.1`, which tests check.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::Result;

/// The folder's name inside the cluster's base folder.
pub const DIR_NAME: &str = "tls";

/// The client certificates' subject CN: `cert` authentication logs them in as the role
/// of that name.
pub const CLIENT_CN: &str = "aiopg_cert";

/// The server's certificate, its key and the CA it checks client certificates with.
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const CA_CERT: &str = "ca.crt";
pub const CA_CRL: &str = "ca.crl";

/// Key files the server may be pointed at: owned by the server's user, since
/// PostgreSQL refuses a key file another user owns (root excepted) or others can read.
const SERVER_KEYS: [&str; 2] = [SERVER_KEY, "server-rsa.key"];

/// Where openssl keeps its configuration and CA database, inside the folder.
const WORK_DIR: &str = "openssl-work";
const CONFIG: &str = "openssl-work/openssl.cnf";

/// Certificates outlive any test run by far; a clock skew of years is not a concern.
const DAYS: &str = "3650";

/// Extension sections for `-extensions`, a minimal `req` section (needed with
/// `-config` even when `-subj` gives the name) and a CA database for `openssl ca`,
/// which is the tool that revokes and writes CRLs. Paths are relative to the tls
/// folder, where openssl runs.
const OPENSSL_CNF: &str = "\
# written by cargo xtask: the test cluster's throwaway PKI
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

# RSA keys may also be used for RSA key exchange (TLS 1.2 clients other than rustls).
[server_rsa_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ca]
default_ca = test_ca
[test_ca]
database = openssl-work/index.txt
crlnumber = openssl-work/crlnumber
certificate = ca.crt
private_key = ca.key
default_md = sha256
default_crl_days = 3650
crl_extensions = crl_ext
# client.crt and revoked.crt share a subject.
unique_subject = no
[crl_ext]
authorityKeyIdentifier = keyid:always
";

#[derive(Clone, Copy, Debug)]
enum KeyKind {
    EcP256,
    Rsa2048,
}

impl KeyKind {
    fn genpkey_args(self) -> &'static [&'static str] {
        match self {
            // Named curve: an explicitly encoded curve is refused by most TLS stacks.
            KeyKind::EcP256 => &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-pkeyopt",
                "ec_param_enc:named_curve",
            ],
            KeyKind::Rsa2048 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    /// The PEM label of the algorithm-specific encoding (SEC1 or PKCS#1).
    fn traditional_label(self) -> &'static str {
        match self {
            KeyKind::EcP256 => "EC PRIVATE KEY",
            KeyKind::Rsa2048 => "RSA PRIVATE KEY",
        }
    }
}

/// A certificate signed by the CA: `<stem>.crt` and `<stem>.key`.
struct Leaf {
    stem: &'static str,
    key: KeyKind,
    cn: &'static str,
    extensions: &'static str,
}

const LEAVES: [Leaf; 5] = [
    Leaf {
        stem: "server",
        key: KeyKind::EcP256,
        cn: "localhost",
        extensions: "server_ext",
    },
    Leaf {
        stem: "server-rsa",
        key: KeyKind::Rsa2048,
        cn: "localhost",
        extensions: "server_rsa_ext",
    },
    Leaf {
        stem: "client",
        key: KeyKind::EcP256,
        cn: CLIENT_CN,
        extensions: "client_ext",
    },
    Leaf {
        stem: "client-rsa",
        key: KeyKind::Rsa2048,
        cn: CLIENT_CN,
        extensions: "client_ext",
    },
    Leaf {
        stem: "revoked",
        key: KeyKind::EcP256,
        cn: CLIENT_CN,
        extensions: "client_ext",
    },
];

/// Second encodings of client keys: (PKCS#8 file, algorithm-specific copy, kind).
const TRADITIONAL_COPIES: [(&str, &str, KeyKind); 2] = [
    ("client.key", "client-sec1.key", KeyKind::EcP256),
    ("client-rsa.key", "client-rsa-pkcs1.key", KeyKind::Rsa2048),
];

/// Creates `dir` and the whole PKI in it, then checks the result with `openssl
/// verify`. With `server_user` (uid, gid) the server's key files are given to that
/// user, which runs the server; everything else stays with the caller (the tests).
pub fn generate(dir: &Path, server_user: Option<(u32, u32)>) -> Result<()> {
    let openssl = Openssl::find(dir)?;
    let work = dir.join(WORK_DIR);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    write(dir, CONFIG, OPENSSL_CNF)?;

    openssl.ca("ca", "aiopg test CA")?;
    openssl.ca("other-ca", "aiopg other CA")?;
    for leaf in &LEAVES {
        openssl.leaf(leaf)?;
    }
    for (pkcs8, copy, kind) in TRADITIONAL_COPIES {
        openssl.run(
            &format!("converting {pkcs8} to {copy}"),
            &["pkey", "-in", pkcs8, "-traditional", "-out", copy],
        )?;
        expect_pem(dir, copy, kind.traditional_label())?;
    }
    openssl.crl()?;
    openssl.verify()?;
    set_permissions(dir, server_user)
}

/// Runs openssl in the tls folder, so that file names and the config's paths are
/// relative to it.
struct Openssl {
    program: PathBuf,
    dir: PathBuf,
}

impl Openssl {
    fn find(dir: &Path) -> Result<Openssl> {
        let program = crate::pg::which_dir("openssl")
            .map(|d| d.join("openssl"))
            .or_else(|| Some(PathBuf::from("/usr/bin/openssl")).filter(|p| p.is_file()))
            .ok_or(
                "openssl not found (on PATH or at /usr/bin/openssl): install the openssl \
                 package (Debian: apt-get install openssl); it makes the test cluster's \
                 TLS certificates",
            )?;
        Ok(Openssl {
            program,
            dir: dir.to_path_buf(),
        })
    }

    fn output(&self, what: &str, args: &[&str]) -> Result<Output> {
        Command::new(&self.program)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: running {}: {e}", self.program.display()).into())
    }

    fn run(&self, what: &str, args: &[&str]) -> Result<()> {
        let out = self.output(what, args)?;
        if !out.status.success() {
            return Err(format!(
                "{what}: `openssl {}` in {} failed ({}):\n{}",
                args.join(" "),
                self.dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            )
            .into());
        }
        Ok(())
    }

    /// A PKCS#8 private key in `file`.
    fn key(&self, file: &str, kind: KeyKind) -> Result<()> {
        let mut args = vec!["genpkey"];
        args.extend_from_slice(kind.genpkey_args());
        args.extend_from_slice(&["-out", file]);
        self.run(&format!("generating {file}"), &args)?;
        expect_pem(&self.dir, file, "PRIVATE KEY")
    }

    /// A self-signed CA: `<stem>.key` and `<stem>.crt`.
    fn ca(&self, stem: &str, cn: &str) -> Result<()> {
        let key = format!("{stem}.key");
        let crt = format!("{stem}.crt");
        self.key(&key, KeyKind::EcP256)?;
        let subject = format!("/CN={cn}");
        self.run(
            &format!("making {crt}"),
            &[
                "req",
                "-new",
                "-x509",
                "-config",
                CONFIG,
                "-extensions",
                "ca_ext",
                "-key",
                &key,
                "-subj",
                &subject,
                "-sha256",
                "-days",
                DAYS,
                "-out",
                &crt,
            ],
        )?;
        expect_pem(&self.dir, &crt, "CERTIFICATE")
    }

    /// A key, a request and a certificate signed by `ca`.
    fn leaf(&self, leaf: &Leaf) -> Result<()> {
        let key = format!("{}.key", leaf.stem);
        let csr = format!("{WORK_DIR}/{}.csr", leaf.stem);
        let crt = format!("{}.crt", leaf.stem);
        let subject = format!("/CN={}", leaf.cn);
        self.key(&key, leaf.key)?;
        self.run(
            &format!("making the request for {crt}"),
            &[
                "req", "-new", "-config", CONFIG, "-key", &key, "-subj", &subject, "-out", &csr,
            ],
        )?;
        let serial = format!("{WORK_DIR}/ca.srl");
        self.run(
            &format!("signing {crt}"),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                CA_CERT,
                "-CAkey",
                "ca.key",
                // Random first serial, then one up per certificate: the CRL names
                // revoked.crt by serial, so none may repeat.
                "-CAserial",
                &serial,
                "-CAcreateserial",
                "-sha256",
                "-days",
                DAYS,
                "-extfile",
                CONFIG,
                "-extensions",
                leaf.extensions,
                "-out",
                &crt,
            ],
        )?;
        expect_pem(&self.dir, &crt, "CERTIFICATE")
    }

    /// `ca.crl`: the CA's revocation list, naming revoked.crt.
    fn crl(&self) -> Result<()> {
        write(&self.dir, &format!("{WORK_DIR}/index.txt"), "")?;
        write(&self.dir, &format!("{WORK_DIR}/crlnumber"), "1000\n")?;
        self.run(
            "revoking revoked.crt",
            &["ca", "-config", CONFIG, "-revoke", "revoked.crt"],
        )?;
        self.run(
            &format!("writing {CA_CRL}"),
            &["ca", "-config", CONFIG, "-gencrl", "-out", CA_CRL],
        )?;
        expect_pem(&self.dir, CA_CRL, "X509 CRL")
    }

    /// Checks the chains as a strict verifier would (`-x509_strict` also demands the key
    /// identifiers), each certificate for its purpose, with the CRL in force; and that
    /// the CRL does revoke revoked.crt.
    fn verify(&self) -> Result<()> {
        let base = [
            "verify",
            "-x509_strict",
            "-crl_check",
            "-CRLfile",
            CA_CRL,
            "-CAfile",
            CA_CERT,
        ];
        let checks: [(&str, &[&str]); 2] = [
            ("sslserver", &["server.crt", "server-rsa.crt"]),
            ("sslclient", &["client.crt", "client-rsa.crt"]),
        ];
        for (purpose, certs) in checks {
            let mut args = base.to_vec();
            args.extend_from_slice(&["-purpose", purpose]);
            args.extend_from_slice(certs);
            self.run(&format!("checking {}", certs.join(", ")), &args)?;
        }
        let mut args = base.to_vec();
        args.push("revoked.crt");
        let out = self.output("checking revoked.crt", &args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !text.contains("revoked") {
            return Err(format!(
                "{CA_CRL} does not revoke revoked.crt (`openssl {}` in {}: {}):\n{}",
                args.join(" "),
                self.dir.display(),
                out.status,
                text.trim_end()
            )
            .into());
        }
        Ok(())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()).into())
}

/// Fails unless `name` starts with a PEM block labelled `label`: the tests ask for
/// specific encodings (PKCS#8, SEC1, PKCS#1), which differ between openssl versions'
/// defaults.
fn expect_pem(dir: &Path, name: &str, label: &str) -> Result<()> {
    let path = dir.join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let begin = format!("-----BEGIN {label}-----");
    if text.starts_with(&begin) {
        return Ok(());
    }
    let first = text.lines().next().unwrap_or("(empty file)");
    Err(format!(
        "{}: openssl wrote `{first}`, expected `{begin}`",
        path.display()
    )
    .into())
}

/// Keys 0600 (libpq and the server refuse keys others can read), the rest 0644 and the
/// folders 0755, so that the server's user can reach the files it reads.
fn set_permissions(dir: &Path, server_user: Option<(u32, u32)>) -> Result<()> {
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
    };
    for folder in [dir.to_path_buf(), dir.join(WORK_DIR)] {
        chmod(&folder, 0o755)?;
        let entries =
            std::fs::read_dir(&folder).map_err(|e| format!("reading {}: {e}", folder.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("reading {}: {e}", folder.display()))?
                .path();
            if path.is_file() {
                let secret = path.extension().is_some_and(|e| e == "key");
                chmod(&path, if secret { 0o600 } else { 0o644 })?;
            }
        }
    }
    if let Some((uid, gid)) = server_user {
        for name in SERVER_KEYS {
            let path = dir.join(name);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| format!("chown postgres {}: {e}", path.display()))?;
        }
    }
    Ok(())
}
