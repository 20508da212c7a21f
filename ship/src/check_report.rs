//! How a sync-check report reads: the terminal summary and the JSON of
//! replcheck, shared with replbench.

use apply::check::{show_key, Report};

/// The human summary of a check: figures, then the verdict with its
/// message ID and every difference, one per line.
pub fn summary(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let secs = r.duration.as_secs_f64();
    let _ = writeln!(
        out,
        "{} objects, {} records ({:.1} MB) checked in {:.1} s ({:.2} M records/s); {} bytes exchanged with the replica; started at journal sequence {}",
        r.objects,
        r.records,
        r.bytes as f64 / 1e6,
        secs,
        r.records as f64 / secs.max(1e-9) / 1e6,
        r.exchanged_bytes,
        r.position
    );
    if r.in_flight > 0 {
        let _ = writeln!(
            out,
            "{} record(s) differed while being hashed but were equal at their probe (changes in flight)",
            r.in_flight
        );
    }
    if r.is_equal() {
        let _ = writeln!(out, "SCI0002I replica equals source");
        return out;
    }
    let _ = writeln!(out, "SCI0003W {} difference(s):", r.mismatches.len());
    for m in &r.mismatches {
        let repaired = match m.repair_sequence {
            Some(s) => format!(" (repaired at sequence {s})"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  object {} ({}) key {}: {}{repaired}",
            m.object_id,
            m.object,
            show_key(&m.key),
            m.kind.label()
        );
    }
    out
}

/// The report as JSON (`replcheck --json`, `replbench --json`).
pub fn json(r: &Report) -> serde_json::Value {
    let mismatches: Vec<serde_json::Value> = r
        .mismatches
        .iter()
        .map(|m| {
            serde_json::json!({
                "object_id": m.object_id,
                "object": m.object,
                "key": show_key(&m.key),
                "key_hex": m.key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "kind": m.kind.label(),
                "repair_sequence": m.repair_sequence,
            })
        })
        .collect();
    serde_json::json!({
        "equal": r.is_equal(),
        "objects": r.objects,
        "records": r.records,
        "bytes": r.bytes,
        "in_flight": r.in_flight,
        "repaired": r.repaired,
        "exchanged_bytes": r.exchanged_bytes,
        "position": r.position,
        "duration_s": r.duration.as_secs_f64(),
        "records_per_s": r.records as f64 / r.duration.as_secs_f64().max(1e-9),
        "mismatches": mismatches,
    })
}
