//! The cluster's certificates: a CA per cluster (Secret `<name>-ca`, never
//! mounted in a pod) and the servers' certificate it signs (Secret
//! `<name>-server`, `kubernetes.io/tls` with `ca.crt`), valid for the
//! Services' names and every pod's name under the headless Service.
//!
//! The server certificate is re-issued when it is missing, signed by
//! another CA, lacks a name, or has less than [`RENEW_BEFORE_DAYS`] left;
//! the kubelet updates the mounted files and the pod's supervisor reloads
//! postgres, which then serves the new one without a restart.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use ordinal_crds::names;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use x509_parser::extensions::GeneralName;

use super::child_meta;
use crate::reconcile::validate::ValidCluster;

/// How long a server certificate the operator issues is valid.
pub const SERVER_VALID_DAYS: i64 = 90;
/// A server certificate with less left than this is re-issued.
pub const RENEW_BEFORE_DAYS: i64 = 30;
/// How long the cluster's CA is valid.
pub const CA_VALID_DAYS: i64 = 3650;
const DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot issue the certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the CA certificate cannot be read: {0}")]
    CaCertificate(String),
    #[error("the CA key cannot be read: {0}")]
    CaKey(String),
    #[error("the time {0} is out of range")]
    Time(i64),
}

/// A CA: its certificate and private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A server certificate, its key and the CA that signed it, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

fn time(unix: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CertError::Time(unix))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER of 16 bytes.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new CA for `cluster`, valid from `now` (unix seconds).
pub fn issue_ca(namespace: &str, cluster: &str, now: i64) -> Result<Ca, CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ordinal");
    dn.push(DnType::CommonName, format!("{namespace}/{cluster} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time(now - 3600)?;
    params.not_after = time(now + CA_VALID_DAYS * DAY)?;
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The names the servers' certificate covers: the Services' names in each
/// form a client may use, and every pod under the headless Service (the
/// name replicas verify).
pub fn server_names(cluster: &ValidCluster) -> Vec<String> {
    let ns = &cluster.namespace;
    let mut out = Vec::new();
    for service in [
        names::rw_service(&cluster.name),
        names::ro_service(&cluster.name),
        names::pooler(&cluster.name),
    ] {
        out.push(service.clone());
        out.push(format!("{service}.{ns}"));
        out.push(format!("{service}.{ns}.svc"));
        out.push(format!("{service}.{ns}.svc.cluster.local"));
    }
    let headless = &cluster.service_name;
    out.push(format!("*.{headless}.{ns}.svc"));
    out.push(format!("*.{headless}.{ns}.svc.cluster.local"));
    out
}

/// Whether the PEM bundle `new` holds every certificate of the PEM bundle
/// `old` (and `old` holds one).
pub fn holds_every_ca(old: &[u8], new: &[u8]) -> bool {
    let certificates = |pem: &[u8]| -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem)
            .filter_map(Result::ok)
            .filter(|p| p.label == "CERTIFICATE")
            .map(|p| p.contents)
            .collect()
    };
    let (old, new) = (certificates(old), certificates(new));
    !old.is_empty() && old.iter().all(|c| new.contains(c))
}

/// The names the cluster's own connections verify, which a user's
/// certificate must hold: every pod under the headless Service (the
/// replicas, pg_basebackup), and `-rw` (the pooler) when there is one.
pub fn verified_names(cluster: &ValidCluster) -> Vec<String> {
    let ns = &cluster.namespace;
    let mut out = vec![format!("*.{}.{ns}.svc", cluster.service_name)];
    if cluster.spec.pooler.is_some() {
        out.push(format!("{}.{ns}.svc", names::rw_service(&cluster.name)));
    }
    out
}

/// A server certificate for `dns_names`, signed by `ca`, valid from `now`
/// for [`SERVER_VALID_DAYS`].
pub fn issue_server(ca: &Ca, dns_names: &[String], now: i64) -> Result<ServerCert, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| CertError::CaKey(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(|e| CertError::CaCertificate(e.to_string()))?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ordinal");
    if let Some(first) = dns_names.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time(now - 3600)?;
    params.not_after = time(now + SERVER_VALID_DAYS * DAY)?;
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ServerCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: ca.cert_pem.clone(),
    })
}

/// Why the server certificate must be issued (again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    Missing,
    Unreadable(String),
    /// Signed by another CA than the cluster's.
    OtherCa,
    /// It lacks names the cluster needs (a Service or the headless
    /// Service was renamed).
    Names(Vec<String>),
    /// It expires at this time (unix seconds), within [`RENEW_BEFORE_DAYS`].
    Expiring(i64),
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("there is none"),
            Self::Unreadable(why) => write!(f, "the present one cannot be read ({why})"),
            Self::OtherCa => f.write_str("the present one is signed by another CA"),
            Self::Names(missing) => {
                write!(f, "the present one lacks the names {}", missing.join(", "))
            }
            Self::Expiring(at) => write!(
                f,
                "the present one expires at {} (less than {RENEW_BEFORE_DAYS} days from now)",
                k8s_openapi::jiff::Timestamp::from_second(*at)
                    .map_or_else(|_| at.to_string(), |t| t.to_string())
            ),
        }
    }
}

/// What a certificate says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_after: i64,
    pub dns_names: Vec<String>,
    pub serial: String,
}

/// Reads the first certificate of `pem`.
pub fn cert_info(pem: &[u8]) -> Result<CertInfo, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let dns_names = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(CertInfo {
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
        serial: cert.raw_serial_as_string(),
    })
}

/// Whether `ca_pem` signed `cert_pem`.
fn signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> Result<bool, String> {
    let (_, cert) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|e| e.to_string())?;
    let cert = cert.parse_x509().map_err(|e| e.to_string())?;
    let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem).map_err(|e| e.to_string())?;
    let ca = ca.parse_x509().map_err(|e| e.to_string())?;
    Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
}

/// Whether the server certificate in `secret` must be issued again, for
/// the CA `ca_pem`, the names `wanted` and the time `now` (unix seconds).
pub fn renewal(
    secret: Option<&Secret>,
    ca_pem: &str,
    wanted: &[String],
    now: i64,
) -> Option<Renewal> {
    let Some(secret) = secret else {
        return Some(Renewal::Missing);
    };
    let key = |k: &str| secret.data.as_ref().and_then(|d| d.get(k)).map(|b| &b.0);
    let (Some(cert), Some(_), Some(ca)) = (
        key(names::TLS_CERT_KEY),
        key(names::TLS_KEY_KEY),
        key(names::TLS_CA_KEY),
    ) else {
        return Some(Renewal::Missing);
    };
    if ca.as_slice() != ca_pem.as_bytes() {
        return Some(Renewal::OtherCa);
    }
    match signed_by(cert, ca) {
        Ok(true) => {}
        Ok(false) => return Some(Renewal::OtherCa),
        Err(why) => return Some(Renewal::Unreadable(why)),
    }
    let info = match cert_info(cert) {
        Ok(info) => info,
        Err(why) => return Some(Renewal::Unreadable(why)),
    };
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !info.dns_names.contains(n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Some(Renewal::Names(missing));
    }
    if info.not_after - now < RENEW_BEFORE_DAYS * DAY {
        return Some(Renewal::Expiring(info.not_after));
    }
    None
}

/// The CA in a `<name>-ca` Secret, when it holds one.
pub fn ca_of(secret: &Secret) -> Option<Ca> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    Some(Ca {
        cert_pem: text(names::TLS_CA_KEY)?,
        key_pem: text(names::CA_KEY_KEY)?,
    })
}

/// The `<name>-ca` Secret. Owned by the cluster: nothing in PGDATA depends
/// on it, and a cluster re-created over kept volumes gets a new CA.
pub fn ca_secret(cluster: &ValidCluster, ca: &Ca) -> Secret {
    Secret {
        metadata: child_meta(cluster, names::ca_secret(&cluster.name)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                names::TLS_CA_KEY.to_owned(),
                ByteString(ca.cert_pem.as_bytes().to_vec()),
            ),
            (
                names::CA_KEY_KEY.to_owned(),
                ByteString(ca.key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The `<name>-server` Secret (`kubernetes.io/tls`, with `ca.crt`).
pub fn server_secret(cluster: &ValidCluster, cert: &ServerCert) -> Secret {
    Secret {
        metadata: child_meta(cluster, names::server_tls_secret(&cluster.name)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(BTreeMap::from([
            (
                names::TLS_CERT_KEY.to_owned(),
                ByteString(cert.cert_pem.as_bytes().to_vec()),
            ),
            (
                names::TLS_KEY_KEY.to_owned(),
                ByteString(cert.key_pem.as_bytes().to_vec()),
            ),
            (
                names::TLS_CA_KEY.to_owned(),
                ByteString(cert.ca_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests;
