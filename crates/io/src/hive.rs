//! Hive-style partition paths (`device_id=17/part-0.parquet`).

/// The value of partition `key` in a relative object path, if a path segment is `key=value`.
pub fn hive_value<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split('/').find_map(|segment| {
        let (k, v) = segment.split_once('=')?;
        (k == key).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_partition_values() {
        assert_eq!(hive_value("device_id=17/part-0.parquet", "device_id"), Some("17"));
        assert_eq!(hive_value("a=1/device_id=x/f", "device_id"), Some("x"));
        assert_eq!(hive_value("part-0.parquet", "device_id"), None);
        assert_eq!(hive_value("device_ids=1/f", "device_id"), None);
    }
}
