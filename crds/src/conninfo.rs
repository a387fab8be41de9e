//! libpq connection strings Ordinal writes: one shape for `primary_conninfo`,
//! whether ordinal-init writes it at a pod's start or the failover loop
//! re-points a running standby.

/// Quotes a libpq connection-string value.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `primary_conninfo` of standby `application_name` streaming from
/// `host:port` as `user`.
pub fn primary_conninfo(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    application_name: &str,
) -> String {
    format!(
        "host={} port={port} user={} password={} application_name={} connect_timeout=5",
        quote(host),
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
                5432,
                "streaming_replica",
                "p'w",
                "db-2"
            ),
            "host='db-1.db-headless.ns.svc' port=5432 user='streaming_replica' password='p\\'w' application_name='db-2' connect_timeout=5"
        );
    }
}
