use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;
use crate::fixtures::{cluster, valid};

const NOW: i64 = 1_796_000_000;

fn issued(cluster: &ValidCluster) -> (Ca, ServerCert) {
    let ca = issue_ca(&cluster.namespace, &cluster.name, NOW).expect("CA");
    let server = issue_server(&ca, &server_names(cluster), NOW).expect("server certificate");
    (ca, server)
}

/// rustls' WebPKI verification of `server` for `name`, trusting `ca`.
fn verify(ca: &Ca, server: &ServerCert, name: &str, at: i64) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("CA PEM"))
        .expect("CA root");
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    let leaf = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).expect("leaf PEM");
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).expect("name"),
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                u64::try_from(at).expect("positive"),
            )),
        )
        .map(|_| ())
}

#[test]
fn the_server_certificate_verifies_for_every_pod_and_service_name() {
    let cluster = valid(cluster().build());
    let (ca, server) = issued(&cluster);
    for name in [
        "db-0.db-headless.ns.svc",
        "db-7.db-headless.ns.svc.cluster.local",
        "db-rw",
        "db-rw.ns.svc",
        "db-ro.ns.svc.cluster.local",
    ] {
        verify(&ca, &server, name, NOW).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Not another cluster's pods, nor a name two labels below the wildcard.
    assert!(verify(&ca, &server, "db-0.other-headless.ns.svc", NOW).is_err());
    assert!(verify(&ca, &server, "x.db-0.db-headless.ns.svc", NOW).is_err());
    // Not after 90 days.
    assert!(verify(&ca, &server, "db-rw", NOW + 91 * DAY).is_err());
}

#[test]
fn a_certificate_of_another_ca_does_not_verify() {
    let cluster = valid(cluster().build());
    let (_, server) = issued(&cluster);
    let (other_ca, _) = issued(&cluster);
    assert!(verify(&other_ca, &server, "db-rw", NOW).is_err());
}

/// A TLS handshake in memory: the client configuration Ordinal's own
/// sessions use (`pgtls::client_config`, trusting `ca`) dialling `name`,
/// against a server presenting `server`.
fn handshake(ca: &Ca, server: &ServerCert, name: &str) -> Result<(), rustls::Error> {
    let client = ordinal_crds::pgtls::client_config(ca.cert_pem.as_bytes()).expect("client");
    let mut client = rustls::ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(name.to_owned()).expect("name"),
    )?;
    let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
        .expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let mut server = rustls::ServerConnection::new(Arc::new(config))?;
    let mut wire = Vec::new();
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).expect("client writes");
        server.read_tls(&mut wire.as_slice()).expect("server reads");
        server.process_new_packets()?;
        wire.clear();
        server.write_tls(&mut wire).expect("server writes");
        client.read_tls(&mut wire.as_slice()).expect("client reads");
        client.process_new_packets()?;
    }
    Ok(())
}

#[test]
fn ordinal_sessions_verify_the_pod_name_not_the_address() {
    let cluster = valid(cluster().build());
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds");
    let ca = issue_ca(&cluster.namespace, &cluster.name, now).expect("CA");
    let server = issue_server(&ca, &server_names(&cluster), now).expect("server certificate");
    // The name the failover loop sends while dialling the pod's address.
    handshake(&ca, &server, "db-0.db-headless.ns.svc").expect("the pod's name verifies");
    // The address itself is no name of the certificate: a session that
    // sent it would fail, which is why the loop sends the name.
    assert!(handshake(&ca, &server, "198.18.0.7").is_err());
    // Another cluster's pods, and a certificate of another CA, fail.
    assert!(handshake(&ca, &server, "db-0.other-headless.ns.svc").is_err());
    let other = issue_ca(&cluster.namespace, &cluster.name, now).expect("CA");
    assert!(handshake(&other, &server, "db-0.db-headless.ns.svc").is_err());
}

#[test]
fn a_ca_bundle_that_still_holds_the_old_ca_keeps_it() {
    let cluster = valid(cluster().build());
    let (old, _) = issued(&cluster);
    let (new, _) = issued(&cluster);
    let (old_pem, new_pem) = (old.cert_pem.as_bytes(), new.cert_pem.as_bytes());
    assert!(holds_every_ca(old_pem, old_pem));
    assert!(!holds_every_ca(old_pem, new_pem));
    let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
    assert!(holds_every_ca(old_pem, bundle.as_bytes()));
    assert!(!holds_every_ca(b"", bundle.as_bytes()));
    // As `secret_text` reads them: without the last newline.
    assert!(holds_every_ca(
        old.cert_pem.trim_end().as_bytes(),
        bundle.trim_end().as_bytes()
    ));
    assert!(ordinal_crds::pgtls::client_config(bundle.trim_end().as_bytes()).is_ok());
}

#[test]
fn a_fresh_certificate_is_kept_until_thirty_days_before_it_expires() {
    let cluster = valid(cluster().build());
    let (ca, server) = issued(&cluster);
    let secret = server_secret(&cluster, &server);
    let wanted = server_names(&cluster);
    assert_eq!(renewal(Some(&secret), &ca.cert_pem, &wanted, NOW), None);
    assert_eq!(
        renewal(Some(&secret), &ca.cert_pem, &wanted, NOW + 59 * DAY),
        None
    );
    assert!(matches!(
        renewal(Some(&secret), &ca.cert_pem, &wanted, NOW + 61 * DAY),
        Some(Renewal::Expiring(at)) if at == NOW + SERVER_VALID_DAYS * DAY
    ));
}

#[test]
fn a_missing_foreign_or_incomplete_certificate_is_issued_again() {
    let cluster = valid(cluster().build());
    let (ca, server) = issued(&cluster);
    let wanted = server_names(&cluster);
    assert_eq!(
        renewal(None, &ca.cert_pem, &wanted, NOW),
        Some(Renewal::Missing)
    );

    let (other_ca, _) = issued(&cluster);
    let secret = server_secret(&cluster, &server);
    assert_eq!(
        renewal(Some(&secret), &other_ca.cert_pem, &wanted, NOW),
        Some(Renewal::OtherCa)
    );

    // The same ca.crt, but a leaf the CA never signed.
    let mut forged = server_secret(
        &cluster,
        &issue_server(&other_ca, &wanted, NOW).expect("cert"),
    );
    forged.data.as_mut().expect("data").insert(
        names::TLS_CA_KEY.to_owned(),
        ByteString(ca.cert_pem.as_bytes().to_vec()),
    );
    assert_eq!(
        renewal(Some(&forged), &ca.cert_pem, &wanted, NOW),
        Some(Renewal::OtherCa)
    );

    let renamed = valid(crate::fixtures::cluster().service_name("pg").build());
    assert_eq!(
        renewal(Some(&secret), &ca.cert_pem, &server_names(&renamed), NOW),
        Some(Renewal::Names(vec![
            "*.pg.ns.svc".to_owned(),
            "*.pg.ns.svc.cluster.local".to_owned()
        ]))
    );

    let mut no_key = secret.clone();
    no_key
        .data
        .as_mut()
        .expect("data")
        .remove(names::TLS_KEY_KEY);
    assert_eq!(
        renewal(Some(&no_key), &ca.cert_pem, &wanted, NOW),
        Some(Renewal::Missing)
    );
}

#[test]
fn the_ca_is_read_back_from_its_secret() {
    let cluster = valid(cluster().build());
    let (ca, _) = issued(&cluster);
    let secret = ca_secret(&cluster, &ca);
    assert_eq!(ca_of(&secret), Some(ca.clone()));
    assert_eq!(secret.metadata.name.as_deref(), Some("db-ca"));
    // It signs again after the round trip.
    let again = issue_server(&ca_of(&secret).expect("CA"), &["db-rw".to_owned()], NOW)
        .expect("certificate");
    verify(&ca, &again, "db-rw", NOW).expect("verifies");
    let info = cert_info(again.cert_pem.as_bytes()).expect("info");
    assert_eq!(info.dns_names, vec!["db-rw".to_owned()]);
}
