//! One file per provider. Adding a provider: write `providers/<name>.rs`
//! implementing [`crate::Provider`], then add one line to [`all`].

pub mod aircall;
pub mod onoff;
pub mod telecmi;
pub mod telnyx;
#[cfg(test)]
pub(crate) mod testkit;
pub mod twilio;
pub mod xarios;

use crate::{Provider, Route};

/// Every provider callstream knows, in routing order.
pub fn all() -> Vec<Box<dyn Provider>> {
    vec![
        Box::new(onoff::Onoff),
        Box::new(xarios::Xarios),
        Box::new(telecmi::Telecmi),
        Box::new(twilio::Twilio),
        Box::new(aircall::Aircall),
        Box::new(telnyx::Telnyx),
    ]
}

/// The provider (its index in `providers`) and route serving `path` when
/// paths are not configured (`Route::default_path`): how tools that
/// replay recorded or generated requests route them as the gateway would.
pub fn by_default_path(
    providers: &[Box<dyn Provider>],
    path: &str,
) -> Option<(usize, &'static Route)> {
    providers.iter().enumerate().find_map(|(i, provider)| {
        let route = provider.routes().iter().find(|r| r.default_path == path)?;
        Some((i, route))
    })
}
