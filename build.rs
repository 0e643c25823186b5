//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds the files, and cargo
//! does not know about them otherwise.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
