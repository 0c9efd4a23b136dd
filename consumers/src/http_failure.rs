//! How an HTTP request failed below HTTP, told the same way by both
//! consumers that call out (CRM targets, recording downloads).

/// A request that got no answer.
pub(crate) enum Failure {
    Timeout,
    Connect(String),
    Transport(String),
}

/// What `error` was. The text leaves the URL out: it may carry a
/// credential in its query.
pub(crate) fn classify(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        return Failure::Timeout;
    }
    let connect = error.is_connect();
    let text = callstream_runtime::error_chain(&error.without_url());
    if connect {
        Failure::Connect(text)
    } else {
        Failure::Transport(text)
    }
}
