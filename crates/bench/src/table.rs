//! The table every benchmark prints its numbers in.

/// One line of the table: what was measured, the number, its ratio and the goal.
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) result: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
}

pub(crate) fn print_table(rows: &[Row]) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("\nmachine: {cores} cores; broker and services on the same machine; ratio = result / raw lapin msg/s (chain rows: flows/s / the raw 2-hop chain's; traced rows: traced / untraced; live rows: p99 / p99 with the first stream count; keys rows: against random ids)\n");
    let w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(10);
    println!(
        "| {:w$} | {:>22} | {:>6} | {:>15} |",
        "benchmark", "result", "ratio", "target"
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(w + 2),
        "-".repeat(24),
        "-".repeat(8),
        "-".repeat(17)
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default();
        println!(
            "| {:w$} | {:>22} | {:>6} | {:>15} |",
            r.name, r.result, ratio, r.target
        );
    }
}
