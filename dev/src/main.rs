//! `callstream-dev`: the whole pipeline in one process (being written).
fn main() {}
