//! Writes the JSON Schema files under `schemas/json/` from the Rust types.
//! `cargo run -p callstream-schemas --bin callstream-schemas [DIR]`

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json"));
    std::fs::create_dir_all(&dir)?;
    for (name, schema) in callstream_schemas::json_schemas() {
        let path = dir.join(name);
        std::fs::write(&path, callstream_schemas::render_schema(&schema))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
