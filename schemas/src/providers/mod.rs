//! One file per provider. Adding a provider: write `providers/<name>.rs`
//! implementing [`crate::Provider`], then add one line to [`all`].

pub mod onoff;
pub mod telecmi;
#[cfg(test)]
mod testkit;
pub mod xarios;

use crate::Provider;

/// Every provider callstream knows, in routing order.
pub fn all() -> Vec<Box<dyn Provider>> {
    vec![
        Box::new(onoff::Onoff),
        Box::new(xarios::Xarios),
        Box::new(telecmi::Telecmi),
    ]
}
