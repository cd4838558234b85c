//! What every caller reads in `INFO`: whether the server is a cluster node.

/// Whether an `INFO` reply (with its `cluster` section) comes from a node
/// with cluster mode on.
pub(crate) fn cluster_enabled(info: &str) -> bool {
    info.lines()
        .any(|line| line.trim().strip_prefix("cluster_enabled:") == Some("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_mode_is_read_from_info() {
        assert!(cluster_enabled(
            "# Server\r\nredis_version:7.0.15\r\n# Cluster\r\ncluster_enabled:1\r\n"
        ));
        assert!(!cluster_enabled("# Cluster\r\ncluster_enabled:0\r\n"));
        assert!(!cluster_enabled("# Server\r\nredis_version:7.0.15\r\n"));
        assert!(!cluster_enabled(
            "xcluster_enabled:1\r\ncluster_enabled:10\r\n"
        ));
    }
}
