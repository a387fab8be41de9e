//! What can go wrong, said for the person at the terminal.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no cluster to talk to: {why}")]
    Config { why: String },

    #[error(
        "PostgresCluster {namespace}/{name} not found (kubectl get pgc -n {namespace} lists them)"
    )]
    NoCluster { namespace: String, name: String },

    #[error("failed to {what} of PostgresCluster {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("{0}")]
    Refused(String),

    #[error("timed out after {seconds}s waiting until {what}; last seen: {last}")]
    Timeout {
        seconds: u64,
        what: String,
        last: String,
    },

    #[error("cannot run kubectl: {source}")]
    Kubectl {
        #[source]
        source: std::io::Error,
    },
}
