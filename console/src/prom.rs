//! The binaries' own `/metrics` (Prometheus' text format), read for the
//! overview, so no Prometheus server is needed.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a text exposition; lines it does not understand
/// are skipped (a page shows what it can).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (head, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], line[close + 1..].trim())
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, rest.trim())
        }
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, labels)) => (name, labels.strip_suffix('}')?),
        None => (head, ""),
    };
    Some(Sample {
        name: name.to_string(),
        labels: parse_labels(labels),
        value,
    })
}

/// `a="x",b="y \" z"` → {a: x, b: y " z}.
fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while let Some((name, rest)) = s.split_once("=\"") {
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_string(), value);
        s = &rest[end..];
    }
    out
}

/// Sum of `name`'s samples, grouped by the value of `label`.
pub fn sum_by(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Sum of every sample of `name`; `None` when there is none.
pub fn total(samples: &[Sample], name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for s in samples.iter().filter(|s| s.name == name) {
        found = true;
        sum += s.value;
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    callstream_gateway_requests_total{source=\"onoff\",outcome=\"accepted\"} 3\n\
                    callstream_gateway_requests_total{source=\"xarios\",outcome=\"accepted\"} 2\n\
                    callstream_gateway_spool_bytes 4096\n\
                    odd{a=\"q\\\"uote,d\"} 1.5\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4);
        assert_eq!(
            sum_by(&samples, "callstream_gateway_requests_total", "outcome")["accepted"],
            5.0
        );
        assert_eq!(
            total(&samples, "callstream_gateway_spool_bytes"),
            Some(4096.0)
        );
        assert_eq!(samples[3].labels["a"], "q\"uote,d");
        assert_eq!(total(&samples, "absent"), None);
    }
}
