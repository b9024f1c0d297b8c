//! Rebuilds the store when a migration is added or changed: `sqlx::migrate!` embeds the
//! migrations at compile time and does not itself ask cargo to watch their directories.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
    println!("cargo:rerun-if-changed=../../migrations/sqlite");
}
