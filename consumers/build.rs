//! Rebuild when a migration is added or changed: `refinery::embed_migrations!`
//! reads `migrations/` at compile time, and Cargo does not watch it otherwise
//! (a stale binary would silently miss a new migration).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
