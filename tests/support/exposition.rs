//! Reads the gateway's `/metrics` text: its samples, and sums over the series of a family.
//! Per-shard families carry a `shard` label and no aggregate series, so a gateway-wide figure
//! is the sum over `shard`, as a Prometheus query would take it.
#![allow(dead_code)]

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of `text` (comments and blank lines skipped). Panics on a line it cannot read.
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {l}"));
            let (name, labels) = parse_series(series);
            let value = value.parse().unwrap_or_else(|_| panic!("bad value: {l}"));
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// `name{k="v",...}` (or a bare `name`) split into the name and its label pairs.
pub fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_string(), Vec::new());
    };
    let inner = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("no closing brace: {series}"));
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} in {series}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("bad escape in {series}"),
                },
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {series}"),
            }
        }
        labels.push((key.trim().to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_string(), labels)
}

/// The sum of every sample named as `series` whose labels include all of `series`' labels
/// (others, such as `shard`, are summed over): `shardcat_sessions` is the gateway's sessions,
/// `shardcat_rejections_total{reason="sessions"}` that reason on every shard, and
/// `shardcat_upstream_state{shard="0",upstream="1"}` one series. `None` when no sample matches.
pub fn sum(text: &str, series: &str) -> Option<f64> {
    let (name, want) = parse_series(series);
    let mut total = None;
    for s in samples(text) {
        if s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(v.as_str())) {
            *total.get_or_insert(0.0) += s.value;
        }
    }
    total
}
