//! Reading stickylb's `/metrics` (Prometheus text format).

/// The value of the first sample of `name` (labels may follow, or be part of `name`) in
/// Prometheus text format.
pub(crate) fn metric_value(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        rest.split_whitespace().last()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn reads_the_table_size_metric() {
        let metrics = "# HELP stickylb_backend_table_entries Entries.\n\
            # TYPE stickylb_backend_table_entries gauge\n\
            stickylb_backend_table_entries_other 5\n\
            stickylb_backend_table_entries{backend=\"web\"} 100000\n";
        assert_eq!(
            metric_value(metrics, "stickylb_backend_table_entries"),
            Some(100_000)
        );
        assert_eq!(metric_value(metrics, "stickylb_nothing"), None);
    }
}
