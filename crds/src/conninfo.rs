//! libpq connection strings Ordinal writes: one shape for `primary_conninfo`,
//! whether ordinal-init writes it at a pod's start or the failover loop
//! re-points a running standby.

/// Quotes a libpq connection-string value.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `host=… port=…`, and `hostaddr=…` when the address is known: libpq
/// then connects to that address without looking the name up (and still
/// checks a server certificate against the name). With `ca` (a CA file),
/// `sslmode=verify-full`: TLS, a certificate the CA signed, for `host`. A pod's DNS name through
/// the headless Service is cached for 30 s by the cluster's DNS (CoreDNS'
/// `cache 30`, as kubeadm sets it): for that long after a pod is
/// recreated, its name can still give the old pod's address.
pub fn server(host: &str, hostaddr: Option<&str>, port: u16, ca: Option<&str>) -> String {
    let mut out = match hostaddr {
        Some(addr) => format!("host={} hostaddr={} port={port}", quote(host), quote(addr)),
        None => format!("host={} port={port}", quote(host)),
    };
    if let Some(ca) = ca {
        out.push_str(&format!(" sslmode=verify-full sslrootcert={}", quote(ca)));
    }
    out
}

/// `primary_conninfo` of standby `application_name` streaming from
/// `host:port` (at `hostaddr`, when known) as `user`, verifying the
/// server against `ca` when TLS is on.
pub fn primary_conninfo(
    host: &str,
    hostaddr: Option<&str>,
    port: u16,
    ca: Option<&str>,
    user: &str,
    password: &str,
    application_name: &str,
) -> String {
    format!(
        "{} user={} password={} application_name={} connect_timeout=5",
        server(host, hostaddr, port, ca),
        quote(user),
        quote(password),
        quote(application_name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted() {
        assert_eq!(quote("p'w\\"), "'p\\'w\\\\'");
        assert_eq!(
            primary_conninfo(
                "db-1.db-headless.ns.svc",
                None,
                5432,
                None,
                "streaming_replica",
                "p'w",
                "db-2"
            ),
            "host='db-1.db-headless.ns.svc' port=5432 user='streaming_replica' password='p\\'w' application_name='db-2' connect_timeout=5"
        );
        assert_eq!(
            primary_conninfo(
                "db-1.db-headless.ns.svc",
                Some("198.18.0.7"),
                5432,
                None,
                "streaming_replica",
                "pw",
                "db-2"
            ),
            "host='db-1.db-headless.ns.svc' hostaddr='198.18.0.7' port=5432 user='streaming_replica' password='pw' application_name='db-2' connect_timeout=5"
        );
        assert_eq!(
            primary_conninfo(
                "db-1.db-headless.ns.svc",
                Some("198.18.0.7"),
                5432,
                Some("/etc/ordinal/tls/ca.crt"),
                "streaming_replica",
                "pw",
                "db-2"
            ),
            "host='db-1.db-headless.ns.svc' hostaddr='198.18.0.7' port=5432 sslmode=verify-full sslrootcert='/etc/ordinal/tls/ca.crt' user='streaming_replica' password='pw' application_name='db-2' connect_timeout=5"
        );
    }
}
